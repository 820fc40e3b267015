"""Validate an API-format workflow against ComfyUI's node definitions (GET /object_info) the way POST /prompt does.

The rules follow ComfyUI's `execution.validate_prompt` / `validate_inputs` (0.3.64), so a workflow that passes here
is one ComfyUI accepts, and each problem carries ComfyUI's own error type:

* every node has a `class_type` that ComfyUI knows (`invalid_prompt`); frontend-only nodes (SetNode, GetNode,
  PrimitiveNode, Note, Reroute) never appear in API format;
* at least one output node exists (`prompt_no_outputs`);
* for each node that leads to an output (ComfyUI validates nothing else): required inputs are present
  (`required_input_missing`); links are `[node_id, output_index]` to an existing node and output
  (`exception_during_validation`) of a matching type (`return_type_mismatch`, `*` matches anything, comma lists
  match on any common type); values convert to INT/FLOAT/STRING/BOOLEAN (`invalid_input_type`) and respect min/max
  (`value_smaller_than_min`, `value_bigger_than_max`); choices are among the offered ones (`value_not_in_list`).
  Optional inputs may be absent, hidden inputs and inputs the node does not declare are ignored, as ComfyUI does.

Two checks go further than ComfyUI, because ComfyUI only fails later, at run time: a literal value given to an input
that takes a link (`link_expected`), and a dependency cycle (`dependency_cycle`).

Missing input files of nodes with an upload widget (LoadImage, VHS_LoadVideo) are *notices*, not errors: they are
the user's per-run data, not part of the installation, and the shipped workflows name placeholders.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Mapping

ERROR = "error"
NOTICE = "notice"

PRIMITIVES = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
FRONTEND_ONLY = ("SetNode", "GetNode", "PrimitiveNode", "Note", "MarkdownNote", "Reroute")
# Inputs that name a file the user uploads for each run; ComfyUI checks them with VALIDATE_INPUTS (file exists).
USER_MEDIA_INPUTS = {("LoadImage", "image"), ("VHS_LoadVideo", "video"), ("LoadAudio", "audio"),
                     ("LoadVideo", "file")}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload")
# Which node pack provides a class, for "install it" hints (prefix or exact name).
NODE_PACKS = (
    ("WanVideo", "ComfyUI-WanVideoWrapper"), ("LoadWanVideo", "ComfyUI-WanVideoWrapper"),
    ("VHS_", "ComfyUI-VideoHelperSuite"), ("OnnxDetectionModelLoader", "ComfyUI-WanAnimatePreprocess"),
    ("PoseAndFaceDetection", "ComfyUI-WanAnimatePreprocess"), ("DrawViTPose", "ComfyUI-WanAnimatePreprocess"),
    ("PoseDetectionOneToAllAnimation", "ComfyUI-WanAnimatePreprocess"), ("ImageResizeKJ", "ComfyUI-KJNodes"),
    ("GetImageSizeAndCount", "ComfyUI-KJNodes"), ("GetImageRangeFromBatch", "ComfyUI-KJNodes"),
    ("ImageConcatMulti", "ComfyUI-KJNodes"),
)
MAX_LISTED_CHOICES = 20  # ComfyUI also stops listing choices beyond 20

DescribeFile = Callable[[str], "str | None"]


@dataclass(frozen=True)
class CheckProblem:
    """One thing wrong with one workflow: where (node id, class, input), what, and how to fix it."""

    workflow: str
    node_id: str
    class_type: str
    input: str
    kind: str  # ComfyUI's error type where it has one
    message: str
    fix: str
    severity: str = ERROR

    def __str__(self) -> str:
        where = f"node {self.node_id}" if self.node_id else "workflow"
        if self.class_type:
            where += f" ({self.class_type})"
        if self.input:
            where += f" input '{self.input}'"
        text = f"{self.workflow}: {where}: {self.message}" if self.workflow else f"{where}: {self.message}"
        return f"{text}; fix: {self.fix}" if self.fix else text

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def is_link(value: Any) -> bool:
    return isinstance(value, list)


def split_spec(spec: Any) -> tuple[Any, dict[str, Any]]:
    """An /object_info input spec -> (type, options). The type is a string, or a list of choices."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return spec, {}
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0], opts


def combo_choices(input_type: Any, opts: Mapping[str, Any]) -> list[Any] | None:
    """The choices of a combo input (old style: a list type; V3: type COMBO with `options`), or None."""
    if isinstance(input_type, list):
        return input_type
    if input_type == "COMBO":
        return opts.get("options")  # a remote COMBO without options is checked by its node, not here
    return None


def is_widget(input_type: Any, opts: Mapping[str, Any]) -> bool:
    """Whether the input is a value (a widget in the UI) rather than a link socket."""
    if opts.get("forceInput"):
        return False
    return isinstance(input_type, list) or input_type == "COMBO" or input_type in PRIMITIVES


def types_match(received: Any, expected: Any) -> bool:
    """ComfyUI's validate_node_input: equal, `*` on either side, or comma-separated type sets that overlap."""
    if received == "*" or expected == "*":
        return True
    if received == expected:
        return True
    if isinstance(received, list) and expected == "COMBO":
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return bool(got & want)


def node_pack(class_type: str) -> str:
    return next((pack for prefix, pack in NODE_PACKS if class_type.startswith(prefix)), "")


def type_name(input_type: Any) -> str:
    return "COMBO" if isinstance(input_type, list) else str(input_type)


def _choices_text(choices: list[Any]) -> str:
    if not choices:
        return "ComfyUI offers no choice at all (the folder it lists is empty)"
    if len(choices) > MAX_LISTED_CHOICES:
        return f"ComfyUI offers {len(choices)} choices"
    return "ComfyUI offers: " + ", ".join(repr(c) for c in choices)


def validate(prompt: Any, object_info: Mapping[str, Any], *, workflow: str = "",
             describe_file: DescribeFile | None = None) -> list[CheckProblem]:
    """Every problem of `prompt` (API format) against `object_info`; errors and notices, in node order."""
    return _Validator(prompt, object_info, workflow, describe_file).run()


class _Validator:
    def __init__(self, prompt: Any, object_info: Mapping[str, Any], workflow: str, describe_file: DescribeFile | None):
        self.prompt, self.info, self.workflow = prompt, object_info, workflow
        self.describe_file = describe_file or (lambda _name: None)
        self.problems: list[CheckProblem] = []

    def add(self, node_id: str, class_type: str, input_name: str, kind: str, message: str, fix: str,
            severity: str = ERROR) -> None:
        self.problems.append(CheckProblem(self.workflow, node_id, class_type, input_name, kind, message, fix,
                                          severity))

    # -- the graph -------------------------------------------------------------------------------------------

    def run(self) -> list[CheckProblem]:
        prompt = self.prompt
        if not isinstance(prompt, dict):
            self.add("", "", "", "invalid_prompt", "the workflow is not a JSON object of nodes keyed by id",
                     "pass an API-format workflow (ComfyUI: Workflow > Export (API))")
            return self.problems
        nodes: dict[str, tuple[str, dict[str, Any]]] = {}
        for node_id, node in prompt.items():
            node_id = str(node_id)
            if not isinstance(node, dict) or not isinstance(node.get("inputs", {}), dict):
                self.add(node_id, "", "", "invalid_prompt", "a node must be an object with 'class_type' and 'inputs'",
                         "export the workflow again in API format")
                continue
            class_type = node.get("class_type")
            if not isinstance(class_type, str) or not class_type:
                self.add(node_id, "", "", "invalid_prompt", "the node has no 'class_type'",
                         "give it the node's class name, as /object_info lists it")
            elif class_type in FRONTEND_ONLY:
                self.add(node_id, class_type, "", "invalid_prompt",
                         f"{class_type} is a node of the browser editor only; API-format workflows never contain it",
                         "export with Workflow > Export (API), which replaces it by direct links and values")
            elif class_type not in self.info:
                self._unknown_class(node_id, class_type)
            else:
                nodes[node_id] = (class_type, node.get("inputs") or {})
        outputs = [nid for nid, (cls, _) in nodes.items() if self.info[cls].get("output_node")]
        if not outputs and len(nodes) == len(prompt):
            self.add("", "", "", "prompt_no_outputs", "the workflow has no output node, so ComfyUI runs nothing",
                     "add a node that saves or previews the result (SaveImage, VHS_VideoCombine, PreviewImage)")
        reachable = self._reachable(nodes, outputs) if outputs else set(nodes)
        for node_id, (class_type, inputs) in nodes.items():
            if node_id in reachable:
                self._node(node_id, class_type, inputs, nodes)
            else:
                self.add(node_id, class_type, "", "unused_node",
                         "the node leads to no output node, so ComfyUI neither validates nor runs it",
                         "connect it to the graph or delete it", NOTICE)
        self._cycles(nodes, reachable)
        return self.problems

    def _unknown_class(self, node_id: str, class_type: str) -> None:
        pack = node_pack(class_type)
        close = difflib.get_close_matches(class_type, list(self.info), n=1, cutoff=0.8)
        if pack:
            fix = (f"install the {pack} node pack, or read the ComfyUI log for its import error "
                   "(a failed import only prints a warning)")
        else:
            fix = "install the node pack that provides it"
        if close:
            fix += f"; did you mean {close[0]}?"
        self.add(node_id, class_type, "", "invalid_prompt",
                 f"node type {class_type} does not exist in this ComfyUI", fix)

    @staticmethod
    def _reachable(nodes: Mapping[str, tuple[str, dict[str, Any]]], outputs: Iterable[str]) -> set[str]:
        seen: set[str] = set()
        stack = list(outputs)
        while stack:
            node_id = stack.pop()
            if node_id in seen or node_id not in nodes:
                continue
            seen.add(node_id)
            for value in nodes[node_id][1].values():
                if is_link(value) and len(value) == 2 and isinstance(value[0], str):
                    stack.append(value[0])
        return seen

    def _cycles(self, nodes: Mapping[str, tuple[str, dict[str, Any]]], among: set[str]) -> None:
        """Report each node on a dependency cycle once (ComfyUI only finds it when it runs the prompt)."""
        state: dict[str, int] = {}  # 1 = on the current path, 2 = done
        reported: set[str] = set()
        for start in sorted(among):
            if state.get(start):
                continue
            path: list[str] = []
            stack: list[tuple[str, Iterable[str]]] = [(start, iter(self._sources(nodes, start)))]
            state[start] = 1
            path.append(start)
            while stack:
                node_id, sources = stack[-1]
                nxt = next(sources, None)
                if nxt is None:
                    state[node_id] = 2
                    path.pop()
                    stack.pop()
                    continue
                if nxt not in among:
                    continue
                if state.get(nxt) == 1:
                    cycle = path[path.index(nxt):]
                    if not reported & set(cycle):
                        reported.update(cycle)
                        self.add(nxt, nodes[nxt][0], "", "dependency_cycle",
                                 f"nodes {' -> '.join(cycle + [nxt])} depend on each other in a loop",
                                 "break the loop: a node cannot take its input from its own result")
                elif not state.get(nxt):
                    state[nxt] = 1
                    path.append(nxt)
                    stack.append((nxt, iter(self._sources(nodes, nxt))))

    @staticmethod
    def _sources(nodes: Mapping[str, tuple[str, dict[str, Any]]], node_id: str) -> list[str]:
        return [v[0] for v in nodes[node_id][1].values() if is_link(v) and len(v) == 2 and isinstance(v[0], str)]

    # -- one node --------------------------------------------------------------------------------------------

    def _node(self, node_id: str, class_type: str, inputs: Mapping[str, Any],
              nodes: Mapping[str, tuple[str, dict[str, Any]]]) -> None:
        definition = self.info[class_type]
        declared = definition.get("input") or {}
        order = definition.get("input_order") or {}
        for section in ("required", "optional"):
            specs = declared.get(section) or {}
            for name in order.get(section) or list(specs):
                if name not in specs:
                    continue
                input_type, opts = split_spec(specs[name])
                if name not in inputs:
                    if section == "required":
                        self._missing(node_id, class_type, name, input_type, opts)
                    continue
                value = inputs[name]
                if is_link(value):
                    self._link(node_id, class_type, name, value, input_type, nodes)
                else:
                    self._value(node_id, class_type, name, value, input_type, opts)

    def _missing(self, node_id: str, class_type: str, name: str, input_type: Any, opts: Mapping[str, Any]) -> None:
        if is_widget(input_type, opts):
            default = opts.get("default")
            choices = combo_choices(input_type, opts)
            if default is None and choices:
                default = choices[0]
            fix = f"set a value (the node's default is {default!r})" if default is not None else "set a value"
        else:
            fix = f"connect an output of type {type_name(input_type)} to it"
        self.add(node_id, class_type, name, "required_input_missing", "required input is missing", fix)

    def _link(self, node_id: str, class_type: str, name: str, value: list[Any], input_type: Any,
              nodes: Mapping[str, tuple[str, dict[str, Any]]]) -> None:
        if len(value) != 2:
            self.add(node_id, class_type, name, "bad_linked_input",
                     f"a link must be [node_id, output_index], got {value!r}", "write it as [\"<node id>\", <index>]")
            return
        source, slot = value
        if not isinstance(source, str):
            hint = f"; write \"{source}\"" if str(source) in self.prompt else ""
            self.add(node_id, class_type, name, "exception_during_validation",
                     f"links to node {source!r}, but node ids in API format are strings",
                     f"use the node id as a string{hint}")
            return
        if source not in self.prompt:
            self.add(node_id, class_type, name, "exception_during_validation",
                     f"links to node '{source}', which is not in the workflow",
                     "connect it to an existing node's output")
            return
        if source not in nodes:
            return  # that node's own problem is reported already
        source_class = nodes[source][0]
        outputs = self.info[source_class].get("output") or []
        names = self.info[source_class].get("output_name") or outputs
        if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < len(outputs):
            listing = ", ".join(f"{i} {type_name(t)}" for i, t in enumerate(outputs)) or "none"
            self.add(node_id, class_type, name, "exception_during_validation",
                     f"links to output {slot!r} of node {source} ({source_class}), which has outputs: {listing}",
                     "use the index of an existing output (counted from 0)")
            return
        received = outputs[slot]
        if not types_match(received, input_type):
            fitting = [f"{i} ({names[i] if i < len(names) else type_name(t)})" for i, t in enumerate(outputs)
                       if types_match(t, input_type)]
            fix = f"connect an output of type {type_name(input_type)}"
            if fitting:
                fix += f"; node {source} has it at output {', '.join(fitting)}"
            self.add(node_id, class_type, name, "return_type_mismatch",
                     f"receives {type_name(received)} from node {source} ({source_class}) output {slot}, but the "
                     f"input takes {type_name(input_type)}", fix)

    def _value(self, node_id: str, class_type: str, name: str, value: Any, input_type: Any,
               opts: Mapping[str, Any]) -> None:
        if isinstance(value, dict) and "__value__" in value:
            value = value["__value__"]  # how the frontend passes a list as a value
        converter = PRIMITIVES.get(input_type) if isinstance(input_type, str) else None
        choices = combo_choices(input_type, opts)
        if converter is None and choices is None and input_type != "COMBO":
            self.add(node_id, class_type, name, "link_expected",
                     f"takes a link from an output of type {type_name(input_type)}, but has the value {value!r}",
                     f"connect a node's {type_name(input_type)} output to it")
            return
        if converter is not None:
            try:
                value = converter(value)
            except Exception as exc:  # exactly what ComfyUI's int()/float()/str()/bool() would raise
                example = opts.get("default", {"INT": 0, "FLOAT": 1.0, "STRING": "text", "BOOLEAN": True}[input_type])
                self.add(node_id, class_type, name, "invalid_input_type",
                         f"{value!r} is not a valid {input_type} value ({exc})",
                         f"give {'an' if input_type == 'INT' else 'a'} {input_type} value such as {example!r}")
                return
        try:
            if "min" in opts and value < opts["min"]:
                self.add(node_id, class_type, name, "value_smaller_than_min",
                         f"value {value!r} is smaller than the minimum {opts['min']!r}",
                         f"use a value from {opts['min']!r}" + (f" to {opts['max']!r}" if "max" in opts else " up"))
                return
            if "max" in opts and value > opts["max"]:
                self.add(node_id, class_type, name, "value_bigger_than_max",
                         f"value {value!r} is bigger than the maximum {opts['max']!r}",
                         f"use a value of at most {opts['max']!r}")
                return
        except TypeError as exc:
            self.add(node_id, class_type, name, "invalid_input_type", f"{value!r} cannot be compared with its "
                     f"limits ({exc})", "give a number")
            return
        if choices is not None and value not in choices:
            self._not_in_list(node_id, class_type, name, value, choices, opts)

    def _not_in_list(self, node_id: str, class_type: str, name: str, value: Any, choices: list[Any],
                     opts: Mapping[str, Any]) -> None:
        if (class_type, name) in USER_MEDIA_INPUTS or any(opts.get(flag) for flag in UPLOAD_FLAGS):
            self.add(node_id, class_type, name, "user_input_missing",
                     f"input file {value!r} is not in ComfyUI's input folder (yet)",
                     f"upload it through this node in the browser, or copy it to COMFYUI_DATA_DIR/input/{value}; "
                     "it is per-run data, so this is a notice, not a failure", NOTICE)
            return
        described = self.describe_file(str(value)) if isinstance(value, str) else None
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
        if described:
            message = f"model file {value!r} is not among the files ComfyUI lists for this input"
            fix = described
        else:
            message = f"{value!r} is not one of the choices ({_choices_text(choices)})"
            fix = "pick one ComfyUI offers"
            if isinstance(value, str) and "." in value[-12:]:
                message = f"file {value!r} is not among the files ComfyUI lists for this input"
                fix = "put the file into the model folder this node reads (see its tooltip), or pick a listed one"
        if close:
            fix += f"; did you mean {close[0]!r}?"
        self.add(node_id, class_type, name, "value_not_in_list", message, fix)


def errors(problems: Iterable[CheckProblem]) -> list[CheckProblem]:
    return [p for p in problems if p.severity == ERROR]


def notices(problems: Iterable[CheckProblem]) -> list[CheckProblem]:
    return [p for p in problems if p.severity == NOTICE]
