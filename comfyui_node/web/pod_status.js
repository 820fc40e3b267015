// comfyui-pod-status: the pod supervisor's state inside ComfyUI's page.
// A banner while the models download ("Models still downloading: 12.3 of 30.4 GB, about 4 min"), and a "Pod"
// sidebar tab with the plan (card, variant, offload, why), the downloads, restarts and out-of-memory counts.
// It reads GET /api/pod-supervisor/status (this node's route, which asks the supervisor on loopback). Values are
// put on the page with textContent only.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TAB_ID = "pod-supervisor";
const POLL_MS = 3000;
const STYLE = `
  #pod-supervisor-banner { position: fixed; top: 56px; left: 50%; transform: translateX(-50%); z-index: 1000;
    display: none; min-width: 360px; max-width: 70vw; padding: 8px 14px; border-radius: 8px; cursor: pointer;
    background: var(--comfy-menu-bg, #353535); color: var(--fg-color, #fff); font: 14px/1.4 sans-serif;
    border: 1px solid var(--border-color, #4e4e4e); box-shadow: 0 4px 14px rgba(0,0,0,.35); }
  #pod-supervisor-banner.failed { border-color: #e05252; }
  .pod-sv-bar { height: 6px; margin-top: 6px; border-radius: 3px; background: rgba(127,127,127,.3); overflow: hidden; }
  .pod-sv-bar > i { display: block; height: 100%; background: #4a90e2; transition: width .6s; }
  .pod-sv-bar.done > i { background: #3fa35c; } .pod-sv-bar.failed > i { background: #e05252; }
  .pod-sv-panel { padding: 10px 12px; font: 13px/1.45 sans-serif; color: var(--fg-color, #ddd);
    overflow-wrap: anywhere; }
  .pod-sv-panel h3 { font-size: 12px; text-transform: uppercase; letter-spacing: .05em; opacity: .7; margin: 14px 0 4px; }
  .pod-sv-panel table { width: 100%; border-collapse: collapse; table-layout: fixed; }
  .pod-sv-panel td:first-child { width: 36%; }
  .pod-sv-panel td { padding: 2px 4px; vertical-align: top; border-bottom: 1px solid var(--border-color, #4e4e4e); }
  .pod-sv-panel td:first-child { opacity: .7; }
  .pod-sv-file { margin: 6px 0; } .pod-sv-small { font-size: 12px; opacity: .8; }
  .pod-sv-warn { color: #e0a552; } .pod-sv-bad { color: #e05252; } .pod-sv-ok { color: #3fa35c; }
`;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value; else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function size(n) {
  if (n == null) return "?";
  if (n >= 1e9) return (n / 1e9).toFixed(1) + " GB";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB";
  return Math.round(n / 1e3) + " kB";
}
function pair(done, total) {  // "12.3 of 30.4 GB"
  if (total >= 1e9) return `${(done / 1e9).toFixed(1)} of ${(total / 1e9).toFixed(1)} GB`;
  return `${size(done)} of ${size(total)}`;
}
function about(seconds) {
  if (seconds == null) return "";
  if (seconds < 90) return `about ${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 5400) return `about ${Math.round(seconds / 60)} min`;
  return `about ${(seconds / 3600).toFixed(1)} h`;
}
function bar(percent, state) {
  const fill = el("i");
  fill.style.width = Math.max(0, Math.min(100, percent || 0)).toFixed(1) + "%";
  return el("div", {class: "pod-sv-bar" + (state ? " " + state : ""), role: "progressbar",
                    "aria-valuenow": (percent || 0).toFixed(1)}, fill);
}
function table(pairs) {
  return el("table", {}, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, v))));
}

// The banner's one line, or null when there is nothing to say.
export function bannerText(s) {
  if (!s || !s.available) return null;
  const fetch = s.fetch || {}, total = fetch.total;
  if (fetch.state === "running" && total && total.size) {
    const eta = about(total.eta_s);
    return `Models still downloading: ${pair(total.bytes || 0, total.size)}${eta ? ", " + eta : ""}`;
  }
  if (["failed", "unavailable", "interrupted"].includes(fetch.state)) {
    return `Model download ${fetch.state}: ${fetch.message || "see the Pod panel"}. Workflows that need these files will fail.`;
  }
  return null;
}

function drawBanner(banner, s) {
  const text = bannerText(s);
  banner.style.display = text ? "block" : "none";
  if (!text) return;
  const failed = s.fetch.state !== "running";
  banner.className = failed ? "failed" : "";
  const total = s.fetch.total || {};
  banner.replaceChildren(el("div", {}, text), failed ? null : bar(total.percent, ""));
}

function drawPanel(root, s) {
  if (!root) return;
  if (!s || !s.available) {
    root.replaceChildren(el("div", {class: "pod-sv-panel"},
      el("p", {}, "The pod supervisor does not answer (ComfyUI was started without it?)")));
    return;
  }
  const out = [];
  out.push(el("div", {class: s.ready ? "pod-sv-ok" : "pod-sv-warn"},
    s.ready ? "Ready" : `${s.phase}: ${(s.not_ready || []).join("; ")}`));
  const fetch = s.fetch || {}, total = fetch.total;
  out.push(el("h3", {}, "Model downloads"));
  if (total && total.files) {
    out.push(el("div", {}, `${pair(total.bytes || 0, total.size)} · ${total.done_files}/${total.files} files` +
      (fetch.state === "running" && total.bytes_per_s ? ` · ${size(total.bytes_per_s)}/s` : "") +
      (fetch.state === "running" && total.eta_s != null ? ` · ${about(total.eta_s)}` : "")));
    out.push(bar(total.percent, fetch.state === "done" ? "done" : ""));
    for (const f of fetch.files || []) {
      if (f.state === "done" && fetch.state === "done") continue;
      out.push(el("div", {class: "pod-sv-file"},
        el("div", {class: "pod-sv-small"}, `${f.dest} — ${f.state}` +
          (f.state === "downloading" ? ` ${pair(f.bytes || 0, f.size)}` + (f.eta_s != null ? `, ${about(f.eta_s)}` : "") : "")),
        bar(f.percent, f.state === "done" ? "done" : f.state === "failed" ? "failed" : "")));
    }
  } else {
    out.push(el("div", {}, fetch.state === "done" ? "All files of the plan are in place." : `Download ${fetch.state || "pending"}`));
  }
  if (fetch.message) out.push(el("div", {class: "pod-sv-bad"}, fetch.message));

  const plan = s.plan || {};
  out.push(el("h3", {}, "Plan"));
  out.push(table([["GPU", plan.gpu || "none (CPU only)"], ["VRAM class", plan.vram_class]]));
  for (const m of plan.models || []) {
    out.push(el("div", {style: "margin-top:6px;font-weight:600"}, m.feature));
    out.push(table([["variant", m.variant], ["offload", m.offload], ["blocks swapped", m.blocks_to_swap],
                    ["why", m.reason], ["if out of memory", (m.ladder || []).join(" → ")]]));
  }
  const stepped = Object.entries(plan.degrade || {});
  if (stepped.length) out.push(el("div", {class: "pod-sv-warn"}, "Stepped down after out of memory: " +
    stepped.map(([f, n]) => `${f} ×${n}`).join(", ")));
  for (const w of plan.warnings || []) out.push(el("div", {class: "pod-sv-warn pod-sv-small"}, w));
  for (const e of plan.errors || []) out.push(el("div", {class: "pod-sv-bad pod-sv-small"}, e));

  out.push(el("h3", {}, "Restarts"));
  const pairs = [["restarts", s.restarts], ["last exit", s.last_exit ? `${s.last_exit.class}: ${s.last_exit.message || ""}` : "none"]];
  if (s.oom && typeof s.oom === "object") {
    pairs.push(["out of memory in prompts", s.oom.in_prompt ?? s.oom.count ?? 0]);
    for (const [rung, n] of Object.entries(s.oom.by_rung || {})) pairs.push([`on ${rung}`, n]);
  }
  out.push(table(pairs));
  if (s.outputs && s.outputs.enabled) {
    out.push(el("h3", {}, "Outputs to object storage"));
    out.push(table([["uploaded", `${s.outputs.uploaded || 0} file${s.outputs.uploaded === 1 ? "" : "s"}`],
                    ["queued", s.outputs.pending],
                    ["failures", s.outputs.failures]]));
  }
  root.replaceChildren(el("div", {class: "pod-sv-panel"}, out));
}

function openPanel() {
  const manager = app.extensionManager;
  try {
    if (manager?.command?.execute) return manager.command.execute(`Workspace.ToggleSidebarTab.${TAB_ID}`);
    manager?.sidebarTab?.toggleSidebarTab?.(TAB_ID);
  } catch (err) {
    console.warn("pod-supervisor: cannot open the panel", err);
  }
}

app.registerExtension({
  name: "PodSupervisor.Status",
  async setup() {
    document.head.append(el("style", {}, STYLE));
    const banner = el("div", {id: "pod-supervisor-banner", title: "Open the Pod panel"});
    banner.addEventListener("click", openPanel);
    document.body.append(banner);
    let last = null, panel = null;
    if (app.extensionManager?.registerSidebarTab) {
      app.extensionManager.registerSidebarTab({
        id: TAB_ID, icon: "pi pi-server", title: "Pod", tooltip: "Pod: model downloads, plan, restarts",
        type: "custom", render: (container) => { panel = container; drawPanel(panel, last); },
      });
    }
    const poll = async () => {
      try {
        const response = await api.fetchApi("/pod-supervisor/status", {cache: "no-store"});
        last = response.ok ? await response.json() : {available: false};
      } catch (err) {
        last = {available: false};
      }
      drawBanner(banner, last);
      if (panel && panel.isConnected) drawPanel(panel, last);
      setTimeout(poll, POLL_MS);
    };
    poll();
  },
});
