"""Results files: atomic, and arrays of numbers one line per row."""
import json

from sidlib.io import json_text, write_json


def test_json_text_reads_back_as_the_object_with_scalar_lists_on_one_line(tmp_path):
    obj = {"config": {"lr": 0.001, "seeds": [0, 1], "name": None}, "history": [{"epoch": 1, "acc": 10.5}],
           "analysis": {"beliefs": [[[0.1, 0.9], [0.5, 0.5]], [[1.0, 0.0], [0.25, 0.75]]], "labels": [1, 0]},
           "empty": {}, "none": [], "nan": float("nan"), "flag": True}
    text = json_text(obj)
    back = json.loads(text)
    assert back.keys() == obj.keys() and back["analysis"] == obj["analysis"] and back["config"] == obj["config"]
    assert back["nan"] != back["nan"] and back["empty"] == {} and back["none"] == []
    lines = text.splitlines()
    assert '        [0.1, 0.9],' in lines and '    "labels": [1, 0]' in lines  # a row per line, indented by depth
    assert len(lines) < len(json.dumps(obj, indent=2).splitlines()) / 1.5
    write_json(tmp_path / "r.json", obj)
    assert (tmp_path / "r.json").read_text() == text + "\n" and not list(tmp_path.glob("*.partial"))


def test_json_text_writes_keys_as_json_dumps_does_and_refuses_what_it_refuses():
    import pytest

    keys = {True: 1, None: 2, 1.5: 3, 7: 4, float("nan"): 5, float("inf"): 6, "a": {False: [1]}}
    assert json.loads(json_text(keys)) == json.loads(json.dumps(keys))
    with pytest.raises(TypeError):
        json.dumps({(1, 2): 0})
    with pytest.raises(TypeError):
        json_text({(1, 2): 0})
