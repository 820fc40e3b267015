"""API-format workflow <-> the browser editor's format (LiteGraph, version 0.4), using the nodes' definitions.

The editor stores a node's values as `widgets_values`, one per widget in the order of the node's inputs in
/object_info (`input_order`, required then optional), and its connections as a `links` table
`[link_id, from_node, from_slot, to_node, to_slot, type]`. Link sockets come first in a node's `inputs`; a value
input that is fed by a link appears after them with `widget: {name}` (the editor keeps its widget value too).
Two editor habits are reproduced: an INT named seed/noise_seed (or any input with `control_after_generate`) is
followed by its "control after generate" value, and an image upload combo by its upload button's value. Nodes of
ComfyUI-VideoHelperSuite (VHS_*) store `widgets_values` as an object keyed by widget name, including the
format-specific extras (pix_fmt, crf, ...) that travel in API format as undeclared inputs.

`ui_to_api(api_to_ui(x)) == x` for every workflow whose value inputs are all given explicitly; a test keeps it so.
"""

from __future__ import annotations

import uuid
from typing import Any, Mapping

from .validate import FRONTEND_ONLY, combo_choices, is_link, is_widget, split_spec, type_name

UI_VERSION = 0.4
SEED_NAMES = ("seed", "noise_seed")
CONTROL_VALUE = "fixed"  # keeps the seed the workflow was resolved with
UPLOAD_VALUE = "image"
VHS_SKIP = ("videopreview", "choose video to upload", "choose file to upload")
NODE_WIDTH = 380
COLUMN_GAP = 60
ROW_GAP = 40


class UiFormatError(ValueError):
    """A workflow that the converter cannot express (the message says which node and why)."""


def is_ui_format(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and isinstance(data.get("links"), list)


def _inputs(definition: Mapping[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    """(name, type, options) of the declared inputs, required then optional, in /object_info order."""
    declared = definition.get("input") or {}
    order = definition.get("input_order") or {}
    out = []
    for section in ("required", "optional"):
        specs = declared.get(section) or {}
        for name in order.get(section) or list(specs):
            if name in specs:
                input_type, opts = split_spec(specs[name])
                out.append((name, input_type, opts))
    return out


def _has_control(name: str, input_type: Any, opts: Mapping[str, Any]) -> bool:
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return input_type == "INT" and name in SEED_NAMES


def _default(input_type: Any, opts: Mapping[str, Any]) -> Any:
    if "default" in opts:
        return opts["default"]
    choices = combo_choices(input_type, opts)
    if choices:
        return choices[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(input_type)


def _definition(node_defs: Mapping[str, Any], class_type: str, node_id: Any) -> Mapping[str, Any]:
    if class_type not in node_defs:
        raise UiFormatError(f"node {node_id}: no definition of node type {class_type!r}")
    return node_defs[class_type]


# ---------------------------------------------------------------------------------------------------------------


def api_to_ui(api: Mapping[str, Any], node_defs: Mapping[str, Any], name: str = "workflow") -> dict[str, Any]:
    """The editor's format of an API-format workflow; node ids must be numeric strings."""
    ids = {}
    for node_id in api:
        if not str(node_id).isdigit():
            raise UiFormatError(f"node id {node_id!r} is not a number; the editor needs numeric ids")
        ids[node_id] = int(node_id)
    links: list[list[Any]] = []
    nodes: dict[str, dict[str, Any]] = {}
    pending: list[tuple[str, int, str, int, str]] = []  # (source, slot, target, target slot, type)

    for node_id, node in api.items():
        class_type = node["class_type"]
        definition = _definition(node_defs, class_type, node_id)
        values = node.get("inputs") or {}
        declared = _inputs(definition)
        sockets: list[dict[str, Any]] = []
        linked_widgets: list[dict[str, Any]] = []
        widget_list: list[Any] = []
        widget_dict: dict[str, Any] = {}
        vhs = class_type.startswith("VHS_")
        for input_name, input_type, opts in declared:
            value = values.get(input_name)
            if is_link(value) and len(value) != 2:
                raise UiFormatError(f"node {node_id} ({class_type}): input {input_name!r} is a malformed link "
                                    f"{value!r}")
            if not is_widget(input_type, opts):
                if input_name in values and not is_link(value):
                    raise UiFormatError(f"node {node_id} ({class_type}): input {input_name!r} takes a link, "
                                        f"not the value {value!r}")
                entry = {"name": input_name, "type": type_name(input_type), "link": None}
                sockets.append(entry)
                if is_link(value):
                    pending.append((value[0], value[1], node_id, -1, type_name(input_type)))
                    entry["_pending"] = len(pending) - 1
                continue
            shown = _default(input_type, opts) if input_name not in values or is_link(value) else value
            if is_link(value):
                entry = {"name": input_name, "type": type_name(input_type), "widget": {"name": input_name},
                         "link": None}
                linked_widgets.append(entry)
                pending.append((value[0], value[1], node_id, -1, type_name(input_type)))
                entry["_pending"] = len(pending) - 1
            if vhs:
                widget_dict[input_name] = shown
                continue
            widget_list.append(shown)
            if _has_control(input_name, input_type, opts):
                widget_list.append(CONTROL_VALUE)
            if opts.get("image_upload"):
                widget_list.append(UPLOAD_VALUE)
        known = {n for n, _, _ in declared}
        extras = {k: v for k, v in values.items() if k not in known}
        if extras and not vhs:
            raise UiFormatError(f"node {node_id} ({class_type}): inputs {sorted(extras)} are not declared by the "
                                "node, and only VHS nodes keep such values in the editor")
        for key, value in extras.items():
            if is_link(value):
                raise UiFormatError(f"node {node_id} ({class_type}): undeclared input {key!r} cannot be a link")
            widget_dict[key] = value
        if vhs:
            widget_dict["videopreview"] = {"hidden": False, "paused": False, "params": {}}
        inputs = sockets + linked_widgets
        for slot, entry in enumerate(inputs):
            if "_pending" in entry:
                source, src_slot, target, _, link_type = pending[entry.pop("_pending")]
                links.append([None, source, src_slot, target, slot, link_type])
        outputs_def = definition.get("output") or []
        output_names = definition.get("output_name") or outputs_def
        node_ui = {
            "id": ids[node_id],
            "type": class_type,
            "pos": [0, 0],
            "size": [NODE_WIDTH, 0],
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": inputs,
            "outputs": [{"name": output_names[i] if i < len(output_names) and isinstance(output_names[i], str)
                         else type_name(t), "type": type_name(t), "links": None, "slot_index": i}
                        for i, t in enumerate(outputs_def)],
            "properties": {"Node name for S&R": class_type},
            "widgets_values": widget_dict if vhs else widget_list,
        }
        title = (node.get("_meta") or {}).get("title")
        if title:
            node_ui["title"] = title
        nodes[node_id] = node_ui

    # Number the links in a stable order (by target node, then slot) and attach them to both ends.
    order = sorted(range(len(links)), key=lambda i: (ids[links[i][3]], links[i][4]))
    renumber = {old: new for new, old in enumerate(order, start=1)}
    final_links = []
    for old in order:
        link_id = renumber[old]
        _, source, src_slot, target, slot, link_type = links[old]
        if source not in nodes:
            raise UiFormatError(f"node {target}: links to node {source!r}, which is not in the workflow")
        outputs = nodes[source]["outputs"]
        if not isinstance(src_slot, int) or not 0 <= src_slot < len(outputs):
            raise UiFormatError(f"node {target}: links to output {src_slot!r} of node {source}, which does not exist")
        outputs[src_slot]["links"] = (outputs[src_slot]["links"] or []) + [link_id]
        nodes[target]["inputs"][slot]["link"] = link_id
        final_links.append([link_id, ids[source], src_slot, ids[target], slot, outputs[src_slot]["type"]])
    _layout(api, nodes, ids)
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"supervisor/workflows/{name}")),
        "revision": 0,
        "last_node_id": max(ids.values(), default=0),
        "last_link_id": len(final_links),
        "nodes": [nodes[k] for k in sorted(nodes, key=lambda k: ids[k])],
        "links": final_links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.7, "offset": [0, 0]}, "frontendVersion": "1.27.10"},
        "version": UI_VERSION,
    }


def _layout(api: Mapping[str, Any], nodes: dict[str, dict[str, Any]], ids: Mapping[str, int]) -> None:
    """Columns by dependency depth, left to right; `order` is a topological order (the editor runs in it)."""
    depth: dict[str, int] = {}

    def level(node_id: str, trail: frozenset[str] = frozenset()) -> int:
        if node_id in depth:
            return depth[node_id]
        if node_id in trail:
            return 0  # a cycle; the checker reports it, the layout only needs to terminate
        sources = [v[0] for v in (api[node_id].get("inputs") or {}).values()
                   if is_link(v) and len(v) == 2 and v[0] in api]
        depth[node_id] = 1 + max((level(s, trail | {node_id}) for s in sources), default=-1)
        return depth[node_id]

    for node_id in api:
        level(node_id)
    columns: dict[int, list[str]] = {}
    for node_id in sorted(api, key=lambda k: (depth[k], ids[k])):
        columns.setdefault(depth[node_id], []).append(node_id)
    order = 0
    for column, members in sorted(columns.items()):
        y = 40
        for node_id in members:
            node = nodes[node_id]
            widgets = node["widgets_values"]
            count = len([k for k in widgets if k not in VHS_SKIP]) if isinstance(widgets, dict) else len(widgets)
            rows = max(len(node["inputs"]), len(node["outputs"]))
            height = 30 + 22 * rows + 26 * count + (200 if isinstance(widgets, dict) else 0)
            node["pos"] = [40 + column * (NODE_WIDTH + COLUMN_GAP), y]
            node["size"] = [NODE_WIDTH, height]
            node["order"] = order
            order += 1
            y += height + ROW_GAP


# ---------------------------------------------------------------------------------------------------------------


def ui_to_api(ui: Mapping[str, Any], node_defs: Mapping[str, Any]) -> dict[str, Any]:
    """The API format of an editor workflow; raises UiFormatError for what only the browser can resolve."""
    links = {}
    for link in ui.get("links") or []:
        if isinstance(link, list) and len(link) >= 5:
            links[link[0]] = link
        elif isinstance(link, dict):  # the newer editor may store links as objects
            links[link["id"]] = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"],
                                 link["target_slot"], link.get("type")]
    api: dict[str, Any] = {}
    for node in sorted(ui.get("nodes") or [], key=lambda n: int(n["id"])):
        class_type = node.get("type")
        node_id = str(node.get("id"))
        if class_type in ("Note", "MarkdownNote"):
            continue
        if class_type in FRONTEND_ONLY:
            raise UiFormatError(f"node {node_id} is a {class_type}; only the browser can resolve it: open the "
                                "workflow in ComfyUI and use Workflow > Export (API)")
        if node.get("mode", 0) != 0:
            raise UiFormatError(f"node {node_id} ({class_type}) is muted or bypassed; export it from the browser")
        definition = _definition(node_defs, class_type, node_id)
        declared = _inputs(definition)
        values = node.get("widgets_values")
        inputs: dict[str, Any] = {}
        if isinstance(values, dict):
            known = {n for n, _, _ in declared}
            for input_name, input_type, opts in declared:
                if is_widget(input_type, opts) and input_name in values:
                    inputs[input_name] = values[input_name]
            for key, value in values.items():
                if key not in known and key not in VHS_SKIP:
                    inputs[key] = value
        else:
            queue = list(values or [])
            for input_name, input_type, opts in declared:
                if not is_widget(input_type, opts):
                    continue
                if not queue:
                    break
                inputs[input_name] = queue.pop(0)
                if _has_control(input_name, input_type, opts) and queue:
                    queue.pop(0)
                if opts.get("image_upload") and queue:
                    queue.pop(0)
        for entry in node.get("inputs") or []:
            link_id = entry.get("link")
            if link_id is None:
                continue
            if link_id not in links:
                raise UiFormatError(f"node {node_id}: input {entry.get('name')!r} uses link {link_id}, which is "
                                    "not in the links table")
            link = links[link_id]
            inputs[entry["name"]] = [str(link[1]), link[2]]
        ordered = {n: inputs[n] for n, _, _ in declared if n in inputs}
        ordered.update({k: v for k, v in inputs.items() if k not in ordered})
        api_node: dict[str, Any] = {"inputs": ordered, "class_type": class_type}
        if node.get("title"):
            api_node["_meta"] = {"title": node["title"]}
        api[node_id] = api_node
    return api
