"""detect, compare, fiqa and /health over real HTTP, real models, real photos."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from .conftest import TEST_DATA_DIR, photo
from .live import b64_of

SAME = [("macron_2014.jpg", "macron_2025.jpg"), ("ardern_2018.jpg", "ardern_2022.jpg")]
PEOPLE = ["macron_2014.jpg", "ardern_2018.jpg", "obama_senate.jpg", "sunak.jpg",
          "astronaut_collins.jpg", "newton.png", "gauss.png"]


def compare_score(server, a: str, b: str, **extra) -> float:
    reply = server.post("compare", {"image_1_base64": b64_of(photo(a)),
                                    "image_2_base64": b64_of(photo(b)), **extra})
    assert reply.status == 200, reply
    assert set(reply.json) == {"score"}
    return reply.json["score"]


def test_health_reports_backend_models_and_warm_up(server):
    reply = server.request("GET", "/health")
    assert reply.status == 200
    health = reply.json
    assert health["status"] == "ok" and health["warm_up"]["ok"] is True
    assert health["backend"] == "onnx" and health["profile"] == "cpu"
    assert health["feature_dim"] == health["models"]["recognizer"]["feature_dim"] == 128
    assert health["store"]["open"] is True


def test_same_person_scores_above_every_different_person_pair(server):
    same = [compare_score(server, a, b) for a, b in SAME]
    different = [compare_score(server, a, b) for i, a in enumerate(PEOPLE) for b in PEOPLE[i + 1:]]
    assert min(same) > max(different)
    assert min(same) >= 82.0 > max(different)  # the calibrated threshold separates them
    assert all(0.0 <= s <= 100.0 for s in same + different)


def test_compare_is_symmetric_and_rounded(server):
    a = compare_score(server, "ardern_2018.jpg", "ardern_2022.jpg")
    b = compare_score(server, "ardern_2022.jpg", "ardern_2018.jpg")
    assert abs(a - b) < 0.02
    assert round(a, 2) == a


def test_base64_with_and_without_data_url_prefix_and_line_breaks(server):
    raw = photo("macron_2014.jpg").read_bytes()
    plain = base64.b64encode(raw).decode()
    prefixed = "data:image/jpeg;base64," + plain
    wrapped = base64.encodebytes(raw).decode()  # the upstream sample client's encoding
    scores = {compare_score(server, "macron_2025.jpg", "macron_2025.jpg")}
    for text in (plain, prefixed, wrapped):
        reply = server.post("compare", {"image_1_base64": text,
                                        "image_2_base64": b64_of(photo("macron_2025.jpg"))})
        assert reply.status == 200
        scores.add(reply.json["score"])
    assert len(scores - {100.0}) == 1  # all three encodings give the same score


def test_compare_reads_paths_under_the_image_root(server):
    reply = server.post("compare", {"image_1_path": str(photo("ardern_2018.jpg")),
                                    "image_2_path": str(photo("ardern_2022.jpg"))})
    assert reply.status == 200 and reply.json["score"] >= 82


def test_base64_beats_path_when_both_are_sent(server):
    reply = server.post("compare", {"image_1_base64": b64_of(photo("macron_2014.jpg")),
                                    "image_1_path": "/etc/passwd",
                                    "image_2_base64": b64_of(photo("macron_2025.jpg"))})
    assert reply.status == 200


@pytest.mark.parametrize("path", ["/etc/hostname", str(TEST_DATA_DIR / ".." / "conftest.py"),
                                  str(TEST_DATA_DIR / "missing.jpg"), str(TEST_DATA_DIR)])
def test_paths_outside_the_roots_or_unreadable_are_not_opened(server, path):
    reply = server.post("compare", {"image_1_path": path,
                                    "image_2_base64": b64_of(photo("macron_2025.jpg"))})
    assert reply.status == 400
    assert reply.error == ("IMAGE_NOT_OPENED", path)


def test_symlink_inside_the_root_pointing_outside_is_refused(server, tmp_path):
    link = TEST_DATA_DIR / "escape_link_test.jpg"
    target = tmp_path / "outside.jpg"
    target.write_bytes(photo("macron_2014.jpg").read_bytes())
    link.symlink_to(target)
    try:
        reply = server.post("fiqa", {"image_path": str(link)})
        assert reply.error == ("IMAGE_NOT_OPENED", str(link))
    finally:
        link.unlink()


def test_image_2_without_a_face_is_named(server):
    reply = server.post("compare", {"image_1_base64": b64_of(photo("macron_2014.jpg")),
                                    "image_2_base64": b64_of(photo("no_face_coffee.jpg"))})
    assert reply.status == 400
    assert reply.error == ("NO_FACE_ERROR", "image_2_base64")


def test_compare_reports_load_errors_before_faces_and_faces_before_quality(server):
    no_face = b64_of(photo("no_face_coffee.jpg"))
    small_face = b64_of(photo("astronaut_collins.jpg"))  # fails "high" on face_size
    reply = server.post("compare", {"image_1_base64": no_face, "image_2_base64": "garbage!"})
    assert reply.error == ("IMAGE_DECODE_ERROR", "image_2_base64")
    reply = server.post("compare", {"image_1_base64": small_face, "image_2_base64": no_face,
                                    "fiqa_level": "high"})
    assert reply.error == ("NO_FACE_ERROR", "image_2_base64")


def test_compare_quality_failure_lists_items(server):
    # The 90-px astronaut face is below the 112 px "high" face size.
    reply = server.post("compare", {"image_1_base64": b64_of(photo("astronaut_collins.jpg")),
                                    "image_2_base64": b64_of(photo("macron_2025.jpg")),
                                    "fiqa_level": "HIGH"})
    assert reply.status == 400
    code, message = reply.error
    assert code == "LOW_QUALITY_ERROR" and "face_size" in message.split(",")


def test_detect_finds_many_faces_in_the_group_photo_largest_first(server):
    reply = server.post("detect", {"image_base64_str": b64_of(photo("solvay_1927_group.jpg")),
                                   "max_num_faces": 100})
    assert reply.status == 200
    faces = reply.json["faces"]
    assert len(faces) >= 15
    areas = [(f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]) for f in faces]
    assert areas == sorted(areas, reverse=True)
    assert all(set(f) == {"bbox"} for f in faces)  # optional keys only when asked


def test_detect_max_num_faces_and_optional_fields(server):
    reply = server.post("detect", {"image_base64_str": b64_of(photo("solvay_1927_group.jpg")),
                                   "max_num_faces": 3, "with_feature": True,
                                   "with_landmark": True, "with_headpose": True,
                                   "with_attribute": True})
    faces = reply.json["faces"]
    assert len(faces) == 3
    for face in faces:
        assert set(face) == {"attribute", "bbox", "feature_base64_str", "headpose", "landmark"}
        assert len(face["landmark"]) == 10
        assert set(face["headpose"]) == {"pitch_angle", "roll_angle", "yaw_angle"}
        attribute = face["attribute"]  # README 8.3; no glasses model (README)
        assert set(attribute) == {"age", "gender", "glasses"} and attribute["glasses"] is None
        assert attribute["gender"] in ("male", "female")
        assert attribute["age"] in ("child", "juvenile", "youth", "middle-aged", "aged")
        feature = np.frombuffer(base64.b64decode(face["feature_base64_str"]), dtype="<f4")
        assert feature.shape == (128,)
        assert abs(float(np.linalg.norm(feature)) - 1.0) < 1e-4


def test_detect_feature_registers_back_as_the_same_person(server):
    """The detect feature is the register_feature format (README 4.3)."""
    faces = server.post("detect", {"image_base64_str": b64_of(photo("ardern_2018.jpg")),
                                   "with_feature": True}).json["faces"]
    created = server.post("createidentity", {"register_feature": faces[0]["feature_base64_str"],
                                             "identity_id": "detect-feature-ardern"})
    assert created.status == 200, created
    found = server.post("search", {"rgb_image_base64": b64_of(photo("ardern_2022.jpg"))})
    assert found.status == 200 and found.json["identity_id"] == "detect-feature-ardern"
    assert found.json["result"] is True
    server.post("deleteidentities", {"identity_ids": ["detect-feature-ardern"]})


def test_detect_no_face(server):
    reply = server.post("detect", {"image_base64_str": b64_of(photo("no_face_coffee.jpg"))})
    assert reply.status == 400 and reply.error == ("NO_FACE_ERROR", "image_base64_str")


def test_fiqa_reports_all_scores_and_canonical_items(server):
    reply = server.post("fiqa", {"image_base64_str": b64_of(photo("ardern_2018.jpg"))})
    assert reply.status == 200
    body = reply.json
    assert body["fiqa_result"] is True
    detail = body["detailed_result"]
    assert detail["failed_items"] == []
    assert detail["passed_items"] == ["headpose", "clarity", "face_size", "partial",
                                      "face_color", "brightness", "mask"]  # mask: at high
    scores = detail["detailed_scores"]
    assert {"brightness", "clarity", "face_size", "headpose", "mask", "occlusion",
            "partial"} <= set(scores)
    assert scores["mask"] == 0  # the mask model saw no mask (checked at "high")
    assert scores["occlusion"] == []  # no occlusion model: not assessed, never listed
    assert "occlusion" not in detail["passed_items"]


def test_fiqa_failure_is_a_result_not_an_error(server):
    reply = server.post("fiqa", {"image_base64_str": b64_of(photo("astronaut_collins.jpg"))})
    assert reply.status == 200  # R26
    assert reply.json["fiqa_result"] is False
    assert "face_size" in reply.json["detailed_result"]["failed_items"]


@pytest.mark.parametrize("level", ["no", "NO"])
def test_fiqa_level_no_checks_nothing(server, level):
    reply = server.post("fiqa", {"image_base64_str": b64_of(photo("astronaut_collins.jpg")),
                                 "fiqa_level": level})
    detail = reply.json["detailed_result"]
    assert reply.json["fiqa_result"] is True
    assert detail["passed_items"] == [] and detail["failed_items"] == []


def test_fiqa_middle_is_normal(server):
    body = {"image_base64_str": b64_of(photo("ardern_2018.jpg"))}
    middle = server.post("fiqa", dict(body, fiqa_level="middle")).json
    normal = server.post("fiqa", dict(body, fiqa_level="normal")).json
    assert middle == normal
    assert "face_color" not in middle["detailed_result"]["passed_items"]


def test_responses_are_sorted_compact_json(server):
    reply = server.post("fiqa", {"image_base64_str": b64_of(photo("ardern_2018.jpg"))})
    assert reply.headers["content-type"].startswith("application/json")
    text = reply.body.decode()
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
