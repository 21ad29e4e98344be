"""Rendering: templates and parameters in, stamped objects (or one complete error) out."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controller.errors import InvalidYAMLError, NotFoundError, SourceError, ValidationError
from controller.model.objects import (
    ANNOTATION_SOURCE,
    LABEL_APP,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_SERVICE,
    SHARED_SERVICE,
    Manifest,
    ObjectKey,
)
from controller.model.parameters import Parameters
from controller.model.rendering import Template, Tree, load_tree, render, service_label

CM = """apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
"""


def tree(**services: dict[str, str]) -> Tree:
    """A tree from `service={"file.yaml": text}`; `shared=` stands for `_shared`."""
    return Tree(Path("/manifests"), {
        (SHARED_SERVICE if name == "shared" else name): tuple(
            Template(f"{SHARED_SERVICE if name == 'shared' else name}/{file}", text)
            for file, text in sorted(files.items()))
        for name, files in services.items()
    })


def params(global_: dict[str, Any] | None = None, **services: dict[str, Any]) -> Parameters:
    return Parameters.from_spec({"global": global_ or {}, "services": services})


def one(text: str, p: Parameters | None = None) -> dict[str, Any]:
    """Render one template of one service and return its only object's body."""
    [m] = render(tree(web={"t.yaml": text}), p or params())
    return m.body


def data(text: str, **values: Any) -> Any:
    """Render `text` under a ConfigMap's `data:` with `values` as the web service's."""
    body = one(CM.format(name="x") + "data:\n" + text, params(web=values))
    return body.get("data")


# --- load_tree ----------------------------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_load_tree_reads_service_folders_recursively_and_sorted(tmp_path: Path) -> None:
    write(tmp_path, {
        "web/b.yaml": "b", "web/a.yml": "a", "web/sub/c.yaml.j2": "c", "web/d.j2": "d",
        "web/e.yml.j2": "e", "web/README.md": "not a template", "web/.hidden.yaml": "x",
        "web/.git/x.yaml": "x", ".github/workflow.yaml": "x", "_shared/ns.yaml": "ns",
        "db/x.yaml": "x", "README.md": "readme", "requirements.txt": "x",
        "parameters.yaml": "global: {}",
    })
    t = load_tree(tmp_path)
    assert t.root == tmp_path
    assert t.names == ["db", "web"]
    assert set(t.services) == {"_shared", "db", "web"}
    assert [x.path for x in t.services["web"]] == [
        "web/a.yml", "web/b.yaml", "web/d.j2", "web/e.yml.j2", "web/sub/c.yaml.j2"]
    assert t.services["web"][0] == Template("web/a.yml", "a")
    assert t.services["_shared"] == (Template("_shared/ns.yaml", "ns"),)


def test_load_tree_refuses_templates_directly_in_the_root(tmp_path: Path) -> None:
    write(tmp_path, {"web/a.yaml": "a", "deployment.yaml": "x"})
    with pytest.raises(ValidationError) as err:
        load_tree(tmp_path)
    assert err.value.details["file"] == "deployment.yaml"
    assert "deployment.yaml" in err.value.message
    assert "service folder" in err.value.message and "_shared/" in err.value.message


def test_load_tree_of_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(SourceError):
        load_tree(tmp_path / "nope")


def test_folders_without_templates_are_not_services(tmp_path: Path) -> None:
    write(tmp_path, {"docs/README.md": "x", "web/a.yaml": "a"})
    (tmp_path / "empty").mkdir()
    assert load_tree(tmp_path).names == ["web"]


def test_a_tree_without_services_renders_nothing() -> None:
    assert render(tree(shared={"ns.yaml": CM.format(name="x")}), params()) == []


def test_one_service_named_as_a_string() -> None:
    t = tree(web={"a.yaml": CM.format(name="w")}, db={"a.yaml": CM.format(name="d")})
    assert [m.key.name for m in render(t, params(), services="web")] == ["w"]


# --- the template context and merge rules -------------------------------------------------


def test_context_holds_global_service_services_name_instance_app() -> None:
    text = CM.format(name="{{ name }}") + """data:
  ns: {{ global.namespace }}
  svc: {{ service.namespace }}
  other: {{ services.db.port }}
  instance: {{ instance }}
  app: {{ app }}
"""
    t = tree(web={"t.yaml": text}, db={})
    p = params({"namespace": "shop"}, web={"namespace": "front"}, db={"port": 5432})
    [m] = render(t, p, instance="blue", app="shop")
    assert m.body["data"] == {"ns": "shop", "svc": "front", "other": 5432,
                              "instance": "blue", "app": "shop"}
    assert m.body["metadata"]["name"] == "web"


def test_merge_rules_apply_to_templates() -> None:
    p = params({"resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                "args": ["a", "b"], "replicas": 1},
               web={"resources": {"requests": {"memory": "1Gi"}}, "args": ["c"],
                    "replicas": 3})
    out = data("  merged: {{ service | tojson }}\n", **p.services["web"])
    assert out == {"merged": {"resources": {"requests": {"memory": "1Gi"}},
                              "args": ["c"], "replicas": 3}}
    body = one(CM.format(name="x") + "data:\n  v: {{ service | tojson }}\n", p)
    assert body["data"]["v"] == {"resources": {"requests": {"cpu": "50m", "memory": "1Gi"}},
                                 "args": ["c"], "replicas": 3}


def test_services_context_covers_services_without_parameters() -> None:
    t = tree(web={"t.yaml": CM.format(name="x") + "data:\n  n: {{ services.db.n }}\n"},
             db={})
    [m] = render(t, params({"n": 1}))
    assert m.body["data"] == {"n": 1}


# --- values keep their types --------------------------------------------------------------


def test_non_string_values_print_as_yaml_literals() -> None:
    out = data("  i: {{ service.i }}\n  f: {{ service.f }}\n  big: {{ service.big }}\n"
               "  t: {{ service.t }}\n  n: {{ service.n }}\n  m: {{ service.m }}\n"
               "  l: {{ service.l }}\n  e: {{ service.e }}\n  inf: {{ service.inf }}\n",
               i=3, f=1.5, big=1e20, t=True, n=None, m={"a": [1, "x: y"]}, l=[], e="",
               inf=float("inf"))
    assert out == {"i": 3, "f": 1.5, "big": 1e20, "t": True, "n": None,
                   "m": {"a": [1, "x: y"]}, "l": [], "e": "", "inf": float("inf")}
    assert type(out["i"]) is int and type(out["big"]) is float


def test_strings_stay_strings_even_when_they_look_like_other_things() -> None:
    out = data("  a: {{ service.a }}\n  b: {{ service.b }}\n  c: {{ service.c }}\n"
               "  d: {{ service.d }}\n  e: {{ service.e }}\n",
               a="16", b="true", c="null", d="2024-01-01", e="~")
    assert out == {"a": "16", "b": "true", "c": "null", "d": "2024-01-01", "e": "~"}


def test_literal_dates_in_templates_stay_strings() -> None:
    assert data("  d: 2024-01-01\n") == {"d": "2024-01-01"}


def test_a_tag_joined_to_an_image() -> None:
    out = data('  image: "{{ service.image }}:{{ service.tag }}"\n  bare: {{ service.image }}'
               ':{{ service.tag }}\n', image="nginx", tag=1.25)
    assert out == {"image": "nginx:1.25", "bare": "nginx:1.25"}


# --- injection safety -----------------------------------------------------------------------


INJECTIONS = [
    "nginx\nevil: true",
    "x\n  hostNetwork: true",
    "x\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: stolen\n",
    'a" , "b": "c',
    "a' , 'b': 'c",
    "{a: 1}", "[1, 2]", "*alias", "&anchor x", "!!python/object:os.system x", "# comment",
    "{{ 7 * 7 }}", "{% raw %}", "\\n\\\"", "\x00\x85\u2028\ufeff", "- item", "? key", "|",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_a_value_cannot_add_fields_or_objects(value: str) -> None:
    t = tree(web={"t.yaml": CM.format(name="x") + "data:\n  image: {{ service.image }}\n"
                                                   "  quoted: \"{{ service.image }}\"\n"})
    manifests = render(t, params(web={"image": value}))
    assert len(manifests) == 1
    assert manifests[0].body["data"] == {"image": value, "quoted": value}
    assert set(manifests[0].body) == {"apiVersion", "kind", "metadata", "data"}


def test_hostnetwork_injection_into_a_pod_spec() -> None:
    text = """apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  containers:
    - name: c
      image: {{ service.image }}
"""
    [m] = render(tree(web={"t.yaml": text}), params(web={"image": "x\n  hostNetwork: true"}))
    assert m.body["spec"] == {"containers": [{"name": "c", "image": "x\n  hostNetwork: true"}]}


CONTEXTS = """  plain: {{ service.v }}
  double: "{{ service.v }}"
  single: '{{ service.v }}'
  joined: "{{ service.v }}:{{ service.v }}"
  bare: pre-{{ service.v }}-post
  {{ service.v }}: key
  flow: [{{ service.v }}, {a: {{ service.v }}}]
  block: |
    {{ service.v }}
  quoted: {{ service.v | quote }}
  json: {{ service.v | tojson }}
  jsonmap: {{ {"k": service.v, "l": [service.v]} | tojson }}
  yamlscalar: {{ service.v | toyaml }}
  yamlmap:
    {{ {"k": service.v, "l": [service.v, {"n": service.v}]} | toyaml(indent=4) }}
  map: {{ {"k": service.v} }}
  b64: {{ service.v | b64enc }}
  roundtrip: {{ service.v | b64enc | b64dec }}
  required: {{ service.v | required }}
"""


def expected(v: str) -> dict[str, Any]:
    return {
        "plain": v, "double": v, "single": v, "joined": f"{v}:{v}", "bare": f"pre-{v}-post",
        v: "key", "flow": [v, {"a": v}], "block": v + "\n", "quoted": v, "json": v,
        "jsonmap": {"k": v, "l": [v]}, "yamlscalar": v, "yamlmap": {"k": v, "l": [v, {"n": v}]},
        "map": {"k": v}, "b64": base64.b64encode(v.encode()).decode(), "roundtrip": v,
        "required": v,
    }


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(min_size=1).filter(lambda v: v not in expected("")))
@example("nginx\nevil: true")
@example("x\n  hostNetwork: true")
@example("\x85\u2028\u2029\ufeff\x7f\x00\t\r\n \"'\\")
@example("\U0001f600 ünïcödé")
def test_any_text_comes_back_as_exactly_the_same_string(v: str) -> None:
    [m] = render(tree(web={"t.yaml": CM.format(name="x") + "data:\n" + CONTEXTS}),
                 params(web={"v": v}))
    assert m.body["data"] == expected(v)


@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1))
@settings(max_examples=100, deadline=None)
def test_any_text_in_a_container_image_stays_one_string(v: str) -> None:
    text = ("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n"
            "  template:\n    spec:\n      containers:\n        - name: c\n"
            "          image: {{ service.image }}\n")
    [m] = render(tree(web={"t.yaml": text}), params(web={"image": v}))
    assert m.body["spec"] == {"template": {"spec": {"containers": [{"name": "c",
                                                                     "image": v}]}}}


def test_tokens_are_never_expanded_twice() -> None:
    # A value that is printed verbatim elsewhere cannot smuggle in another value's token.
    out = data("  a: {{ service.a }}\n  b: {{ service.b }}\n", a="A", b="B")
    assert out == {"a": "A", "b": "B"}
    # A token in a comment simply disappears.
    assert data("  a: 1 # {{ service.a }}\n", a="x\nb: 2") == {"a": 1}


# --- filters ------------------------------------------------------------------------------------


def test_toyaml_nests_under_a_key() -> None:
    res = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}}
    text = ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n"
            "    - name: c\n      resources:\n        {{ service.res | toyaml(indent=8) }}\n"
            "      image: x\n")
    body = one(text, params(web={"res": res}))
    assert body["spec"]["containers"][0] == {"name": "c", "resources": res, "image": "x"}


def test_toyaml_of_lists_scalars_and_empties() -> None:
    out = data("  l:\n    {{ service.l | toyaml(indent=4) }}\n  s: {{ service.s | toyaml }}\n"
               "  e: {{ service.e | toyaml }}\n  n: {{ service.n | toyaml }}\n"
               "  i: {{ service.i | toyaml }}\n",
               l=[{"a": 1}, "b", [2]], s="x: y", e={}, n=None, i=4)
    assert out == {"l": [{"a": 1}, "b", [2]], "s": "x: y", "e": {}, "n": None, "i": 4}


def test_quote_filter() -> None:
    out = data("  a: {{ service.a | quote }}\n  b: {{ service.b | quote }}\n"
               "  c: {{ service.c | quote }}\n  d: {{ service.d | quote }}\n",
               a=5, b=True, c=None, d="it's \"quoted\"")
    assert out == {"a": "5", "b": "true", "c": "", "d": "it's \"quoted\""}


def test_tojson_filter() -> None:
    out = data("  j: {{ service.cfg | tojson }}\n  s: {{ service.cfg | tojson | quote }}\n",
               cfg={"a": [1, None, True], "b": "x\ny"})
    assert out["j"] == {"a": [1, None, True], "b": "x\ny"}
    assert out["s"] == '{"a": [1, null, true], "b": "x\\ny"}'


def test_b64_filters() -> None:
    out = data("  e: {{ service.p | b64enc }}\n  d: {{ service.e | b64dec }}\n"
               "  n: {{ service.n | b64enc }}\n", p="sécret", e="aGk=", n=42)
    assert out == {"e": base64.b64encode("sécret".encode()).decode(), "d": "hi",
                   "n": base64.b64encode(b"42").decode()}


def test_b64dec_of_garbage_is_a_render_error() -> None:
    with pytest.raises(ValidationError) as err:
        data("  d: {{ service.e | b64dec }}\n", e="not base64!")
    assert "b64dec" in err.value.details["reason"]


def test_default_filter_and_strict_undefined() -> None:
    out = data("  a: {{ service.missing | default('fallback') }}\n"
               "  b: {{ service.port | default(80) }}\n")
    assert out == {"a": "fallback", "b": 80}


@pytest.mark.parametrize("value", [None, "", [], {}])
def test_required_refuses_empty_values(value: Any) -> None:
    with pytest.raises(ValidationError) as err:
        data("\n\n  p: {{ service.p | required('set services.web.p') }}\n", p=value)
    assert err.value.details["reason"] == "set services.web.p"
    assert err.value.details["line"] == 8
    assert err.value.details["file"] == "web/t.yaml"


def test_required_refuses_undefined_and_passes_values() -> None:
    with pytest.raises(ValidationError) as err:
        data("  p: {{ service.p | required }}\n")
    assert "required" in err.value.details["reason"]
    assert data("  p: {{ service.p | required }}\n", p=0) == {"p": 0}


# --- errors -------------------------------------------------------------------------------------


def test_undefined_variable_names_file_and_line() -> None:
    text = CM.format(name="x") + "data:\n  a: {{ service.nope }}\n"
    with pytest.raises(ValidationError) as err:
        render(tree(web={"t.yaml": text}), params())
    details = err.value.details
    assert (details["file"], details["line"]) == ("web/t.yaml", 6)
    assert "nope" in details["reason"]
    assert err.value.message.startswith("web/t.yaml:6: ")
    assert details["errors"] == [{"file": "web/t.yaml", "line": 6,
                                  "reason": details["reason"], "service": "web"}]


def test_undefined_top_level_variable_is_never_an_empty_string() -> None:
    with pytest.raises(ValidationError) as err:
        data("  a: {{ nope }}\n")
    assert "'nope' is undefined" in err.value.details["reason"]


def test_undefined_inside_a_loop_and_in_an_imported_macro() -> None:
    macros = "{% macro m() %}\n{{ missing }}\n{% endmacro %}\n"
    text = CM.format(name="x") + ("{% import 'web/_m.j2' as h %}\n"
                                  "data:\n  a: {{ h.m() }}\n")
    with pytest.raises(ValidationError) as err:
        render(tree(web={"t.yaml": text, "_m.j2": macros}), params())
    assert (err.value.details["file"], err.value.details["line"]) == ("web/_m.j2", 2)


def test_template_syntax_error_names_file_and_line() -> None:
    text = CM.format(name="x") + "data:\n{% if %}\n"
    with pytest.raises(ValidationError) as err:
        render(tree(web={"t.yaml": text}), params())
    assert (err.value.details["file"], err.value.details["line"]) == ("web/t.yaml", 6)


def test_invalid_yaml_reports_file_line_and_column() -> None:
    text = CM.format(name="x") + "data:\n  a: [1, 2\n  b: c\n"
    with pytest.raises(InvalidYAMLError) as err:
        render(tree(web={"t.yaml": text}), params())
    details = err.value.details
    assert err.value.code == "invalid_yaml"
    assert details["file"] == "web/t.yaml"
    assert details["service"] == "web"
    assert details["line"] == 7 and details["column"] >= 1
    assert details["reason"]
    assert details["errors"][0]["file"] == "web/t.yaml"


def test_yaml_error_line_counts_rendered_lines() -> None:
    # The loop renders six lines from two: the error is on rendered line 13, template line 9.
    text = CM.format(name="x") + ("data:\n{% for i in [1, 2, 3] %}\n  k{{ i }}: v\n"
                                  "{% endfor %}\n  bad: : :\n")
    with pytest.raises(InvalidYAMLError) as err:
        render(tree(web={"t.yaml": text}), params())
    assert err.value.details["line"] == 13


def test_unacceptable_characters_are_invalid_yaml() -> None:
    with pytest.raises(InvalidYAMLError) as err:
        render(tree(web={"t.yaml": CM.format(name="x") + "data:\n  a: \x07\n"}), params())
    assert err.value.details["line"] == 6


@pytest.mark.parametrize("text, missing", [
    ("kind: ConfigMap\nmetadata:\n  name: x\n", "apiVersion"),
    ("apiVersion: v1\nmetadata:\n  name: x\n", "kind"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {}\n", "metadata.name"),
    ("apiVersion: v1\nkind: ConfigMap\n", "metadata.name"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ''\n", "metadata.name"),
])
def test_objects_need_apiversion_kind_and_name(text: str, missing: str) -> None:
    with pytest.raises(ValidationError) as err:
        render(tree(web={"t.yaml": "---\n" + CM.format(name="ok") + "---\n# next\n" + text}),
               params())
    assert missing in err.value.details["reason"]
    # The line the document's content starts on, after the separator and the comment.
    assert (err.value.details["file"], err.value.details["line"]) == ("web/t.yaml", 8)


def test_a_document_must_be_a_mapping() -> None:
    with pytest.raises(ValidationError) as err:
        render(tree(web={"t.yaml": "- a\n- b\n"}), params())
    assert "mapping" in err.value.details["reason"]
    assert err.value.details["line"] == 1


def test_labels_must_be_a_mapping() -> None:
    with pytest.raises(ValidationError) as err:
        one(CM.format(name="x") + "  labels: [a]\n")
    assert "metadata.labels" in err.value.details["reason"]


def test_the_same_object_twice_names_both_files() -> None:
    t = tree(web={"a.yaml": CM.format(name="dup"), "b.yaml": "\n" + CM.format(name="dup")},
             db={"c.yaml": CM.format(name="dup")})
    with pytest.raises(ValidationError) as err:
        render(t, params())
    errors = err.value.details["errors"]
    assert len(errors) == 2
    # Services render in name order, so db/c.yaml is the first one seen.
    assert "db/c.yaml" in errors[0]["reason"] and "web/a.yaml" in errors[0]["reason"]
    assert "db/c.yaml" in errors[1]["reason"] and "web/b.yaml" in errors[1]["reason"]
    assert errors[1]["line"] == 2


def test_same_name_in_other_namespaces_or_kinds_is_fine() -> None:
    t = tree(web={"a.yaml": CM.format(name="x") + "  namespace: a\n",
                  "b.yaml": CM.format(name="x") + "  namespace: b\n",
                  "c.yaml": CM.format(name="x").replace("ConfigMap", "Secret"),
                  "d.yaml": CM.format(name="x")})
    assert len(render(t, params())) == 4


def test_every_error_is_collected_and_nothing_is_returned() -> None:
    t = tree(web={"a.yaml": "a: [", "b.yaml": "{{ nope }}", "c.yaml": CM.format(name="ok"),
                  "d.yaml": "kind: X\n"},
             db={"e.yaml": "{% if %}"})
    with pytest.raises(ValidationError) as err:
        render(t, params())
    errors = err.value.details["errors"]
    assert [e["file"] for e in errors] == ["db/e.yaml", "web/a.yaml", "web/b.yaml", "web/d.yaml"]
    assert all({"file", "line", "reason"} <= set(e) for e in errors)
    assert err.value.details["file"] == "db/e.yaml"
    assert "(and 3 more errors)" in err.value.message


def test_first_error_decides_the_code() -> None:
    with pytest.raises(InvalidYAMLError) as err:
        render(tree(web={"a.yaml": "a: [", "b.yaml": "{{ nope }}"}), params())
    assert len(err.value.details["errors"]) == 2


def test_the_sandbox_refuses_python_internals() -> None:
    with pytest.raises(ValidationError):
        data("  a: {{ ''.__class__.__mro__ }}\n")
    with pytest.raises(ValidationError):
        data("  a: {{ service.update({'x': 1}) }}\n", y=1)  # parameters are read-only


def test_a_recursive_alias_is_an_error_not_a_crash() -> None:
    with pytest.raises(ValidationError) as err:
        one(CM.format(name="x") + "data: &a\n  self: *a\n")
    assert "recursive" in err.value.details["reason"]


# --- multi-document files ---------------------------------------------------------------------


def test_multi_document_files_with_empty_documents() -> None:
    text = ("---\n# only a comment\n---\n" + CM.format(name="a") + "---\n---\n\n"
            + CM.format(name="b") + "...\n---\n{% if false %}\n" + CM.format(name="c")
            + "{% endif %}\n---\n")
    manifests = render(tree(web={"t.yaml": text}), params())
    assert [(m.body["metadata"]["name"], m.line) for m in manifests] == [("a", 4), ("b", 11)]
    assert all(m.source == "web/t.yaml" and m.service == "web" for m in manifests)


def test_a_file_that_renders_to_nothing() -> None:
    assert render(tree(web={"t.yaml": "{% if false %}x: 1{% endif %}\n"}), params()) == []


# --- selection, _shared, ordering -------------------------------------------------------------


def test_unknown_service() -> None:
    with pytest.raises(NotFoundError) as err:
        render(tree(web={}, db={}), params(), services=["web", "cache"])
    assert err.value.details == {"service": "cache", "available": ["db", "web"]}


def test_shared_follows_the_services() -> None:
    shared = CM.format(name="{{ name }}-{{ global.g }}-{{ service.g }}") + "  namespace: ''\n"
    t = tree(shared={"ns.yaml": shared}, web={"a.yaml": CM.format(name="w")},
             db={"a.yaml": CM.format(name="d")})
    p = params({"g": "g"}, web={"g": "not-used"})
    by = {m.key.name: m for m in render(t, p, services=["web"])}
    assert set(by) == {"_shared-g-g", "w"}
    assert by["_shared-g-g"].service == SHARED_SERVICE
    assert by["_shared-g-g"].body["metadata"]["labels"][LABEL_SERVICE] == ""
    assert render(t, p, services=[]) == []
    assert [m.key.name for m in render(t, p)] == ["_shared-g-g", "d", "w"]
    # Naming _shared is harmless: it is not a service and follows the others.
    assert render(t, p, services=[SHARED_SERVICE]) == []


def test_service_label_values() -> None:
    assert service_label("web") == "web"
    assert service_label(SHARED_SERVICE) == ""


def test_order_is_service_then_file_then_document() -> None:
    t = tree(zeta={"a.yaml": CM.format(name="z")},
             alpha={"b.yaml": CM.format(name="b1") + "---\n" + CM.format(name="b2"),
                    "a.yaml": CM.format(name="a")},
             shared={"x.yaml": CM.format(name="s")})
    names = [m.key.name for m in render(t, params(), services=["zeta", "alpha"])]
    assert names == ["s", "a", "b1", "b2", "z"]


# --- stamping ------------------------------------------------------------------------------------


def test_stamping_adds_ours_and_keeps_theirs() -> None:
    text = CM.format(name="x") + ("  labels:\n    team: a\n    conductor.io/app: spoofed\n"
                                  "  annotations:\n    note: keep\n")
    [m] = render(tree(web={"t.yaml": text}), params(), instance="blue", app="shop")
    assert m.body["metadata"]["labels"] == {
        "team": "a", LABEL_MANAGED_BY: "conductor", LABEL_APP: "shop",
        LABEL_INSTANCE: "blue", LABEL_SERVICE: "web"}
    assert m.body["metadata"]["annotations"] == {"note": "keep", ANNOTATION_SOURCE: "web/t.yaml"}
    assert m == Manifest("web", m.body, "web/t.yaml", 1)
    assert m.key == ObjectKey("", "ConfigMap", "", "x")


def test_empty_labels_are_fine() -> None:
    body = one(CM.format(name="x") + "  labels:\n  annotations:\n")
    assert body["metadata"]["labels"][LABEL_SERVICE] == "web"


@pytest.mark.parametrize("kwargs", [
    {"instance": "Blue"}, {"instance": "a" * 64}, {"instance": "-x"}, {"app": "my app"},
    {"app": ""},
])
def test_names_must_be_label_values(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        render(tree(web={"t.yaml": CM.format(name="x")}), params(), **kwargs)


def test_service_folder_names_must_be_dns_labels() -> None:
    with pytest.raises(ValidationError) as err:
        render(tree(Web_1={"t.yaml": CM.format(name="x")}), params())
    assert err.value.details["service"] == "Web_1"


def test_dotted_instance_names_are_allowed() -> None:
    [m] = render(tree(web={"t.yaml": CM.format(name="x")}), params(), instance="a.b")
    assert m.body["metadata"]["labels"][LABEL_INSTANCE] == "a.b"


def test_rendering_is_pure_and_repeatable() -> None:
    t = tree(web={"t.yaml": CM.format(name="x") + "data:\n  a: {{ service.a }}\n"})
    p = params(web={"a": "x\ny"})
    before = p.to_spec()
    assert render(t, p) == render(t, p)
    assert p.to_spec() == before


def test_bodies_are_plain_data() -> None:
    body = one(CM.format(name="x") + "data:\n  a: {{ service.a | toyaml }}\n  b: {{ service.b }}\n"
               "  c: {{ service.b | safe }}\n  d: {{ service.b | e }}\n",
               params(web={"a": "s", "b": "<t>\nx: 1"}))
    assert body["data"] == {"a": "s", "b": "<t>\nx: 1", "c": "<t>\nx: 1", "d": "&lt;t&gt;\nx: 1"}
    assert all(type(v) is str for v in body["data"].values())
    assert yaml.safe_load(yaml.safe_dump(body)) == body
