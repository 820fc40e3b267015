// Screenshots of the operator's view in headless Chromium, driven by playwright-core (npm) with Debian's
// chromium. Used by bench/operator_view.py; prints one JSON object with what it saw.
//
//   node bench/screens.mjs page    URL OUT.png                 the supervisor's status page
//   node bench/screens.mjs comfyui URL OUT_PREFIX [--panel]    ComfyUI with the pod-status node: the banner,
//                                                              then (--panel) the "Pod" sidebar panel
// NODE_PATH must hold playwright-core (e.g. a folder where `npm install playwright-core` ran).
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.NODE_PATH || process.cwd(), "x.js"));
const { chromium } = require("playwright-core");

const [mode, url, out, ...rest] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
const result = { mode, url };
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  const errors = [];
  page.on("pageerror", (err) => errors.push(String(err.stack || err).slice(0, 600)));
  page.on("console", (msg) => { if (msg.type() === "error") errors.push(msg.text()); });
  if (mode === "page") {
    await page.setViewportSize({ width: 1280, height: 1400 });
    await page.goto(url, { waitUntil: "networkidle" });
    await page.waitForSelector("body[data-phase]", { timeout: 15000 });
    result.phase = await page.getAttribute("body", "data-phase");
    result.total = await page.textContent("#dl").catch(() => null);
    await page.screenshot({ path: out, fullPage: true });
  } else if (mode === "comfyui") {
    await page.goto(url, { waitUntil: "domcontentloaded" });
    await page.waitForSelector(".comfy-menu, .comfyui-body-top, #graph-canvas", { timeout: 60000 });
    // A first visit may open a dialog (templates, release notes): close it so the canvas shows.
    for (let i = 0; i < 3 && await page.locator(".p-dialog-mask").count(); i++) {
      await page.keyboard.press("Escape");
      await page.waitForTimeout(500);
    }
    const banner = page.locator("#pod-supervisor-banner");
    if (rest.includes("--no-banner")) {
      await page.waitForTimeout(6000);  // two polls of the node
      result.banner_visible = await banner.isVisible();
    } else {
      await banner.waitFor({ state: "visible", timeout: 30000 });
      result.banner = (await banner.textContent()).trim();
      await page.waitForTimeout(500);
      await page.screenshot({ path: `${out}-banner.png` });
    }
    if (rest.includes("--panel")) {
      const button = page.locator(".pod-supervisor-tab-button, button[aria-label*='Pod']").first();
      if (await button.count()) await button.click();
      else await page.evaluate(() => window.app?.extensionManager?.command?.execute("Workspace.ToggleSidebarTab.pod-supervisor"));
      await page.waitForSelector(".pod-sv-panel", { timeout: 15000 });
      await page.waitForTimeout(3500);  // one more poll, so the bars are current
      result.panel = (await page.textContent(".pod-sv-panel")).trim().slice(0, 2000);
      await page.screenshot({ path: `${out}-panel.png` });
    }
  }
  result.errors = errors.slice(0, 20);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
