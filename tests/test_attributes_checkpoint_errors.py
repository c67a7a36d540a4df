"""Random, truncated or edited attribute-recognizer checkpoints give an error naming the file and what
is wrong, not a raw unpickling / load_state_dict traceback."""

import pytest
import torch

from galw_d2.attributes.recognizer import AttributeRecognizer, load_backbone_weights, load_recognizer, save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = AttributeRecognizer(2, "osnet_x0_25", ["conv2"], 8, 3, 4, (32, 16))
    path = str(tmp_path_factory.mktemp("attr") / "rec.pth")
    save_checkpoint(model, path, ["male", "hat"])
    return path


def _edit(ckpt, tmp_path, fn):
    obj = torch.load(ckpt, map_location="cpu", weights_only=False)
    fn(obj)
    p = str(tmp_path / "edited.pth")
    torch.save(obj, p)
    return p


def test_round_trip_still_works(ckpt):
    model, names, _ = load_recognizer(ckpt)
    assert names == ["male", "hat"] and model.num_attributes == 2


def test_random_empty_and_truncated_files(ckpt, tmp_path):
    rnd = tmp_path / "random.pth"
    rnd.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match=rf"attribute recognizer checkpoint {rnd}: cannot be read"):
        load_recognizer(str(rnd))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"attribute recognizer checkpoint {empty}: the file is empty"):
        load_recognizer(str(empty))
    data = open(ckpt, "rb").read()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{trunc}: cannot be read .*truncated"):
        load_recognizer(str(trunc))
    with pytest.raises(ValueError, match=rf"backbone weights {rnd}: cannot be read"):
        load_backbone_weights(AttributeRecognizer(2, "osnet_x0_25", ["conv2"], 8, 3, 4, (32, 16)).backbone, str(rnd))


def test_edited_checkpoints(ckpt, tmp_path):
    p = _edit(ckpt, tmp_path, lambda o: o["config"].update(num_attributes=5))
    with pytest.raises(
        ValueError,
        match=r"edited\.pth: the weights do not match its 'config'.*"
        r"tensors of another shape",
    ):
        load_recognizer(p)
    p = _edit(ckpt, tmp_path, lambda o: o.update(attribute_names=["male"]))
    with pytest.raises(ValueError, match=r"edited\.pth: 'attribute_names' has 1 names but the model has 2"):
        load_recognizer(p)
    p = _edit(ckpt, tmp_path, lambda o: o["config"].update(backbone="nonet"))
    with pytest.raises(ValueError, match=r"edited\.pth: 'config' cannot build the model .*nonet"):
        load_recognizer(p)
    p = _edit(ckpt, tmp_path, lambda o: o["config"].update(colour="blue"))
    with pytest.raises(ValueError, match=r"edited\.pth: 'config' has unknown keys \['colour'\]"):
        load_recognizer(p)
    p = _edit(ckpt, tmp_path, lambda o: o.pop("model"))
    with pytest.raises(ValueError, match=r"edited\.pth: missing field 'model'"):
        load_recognizer(p)

    def nan(o):
        k = next(iter(o["model"]))
        o["model"][k] = torch.full_like(o["model"][k], float("nan"))

    p = _edit(ckpt, tmp_path, nan)
    with pytest.raises(ValueError, match=r"edited\.pth: tensor '.*' has NaN/inf"):
        load_recognizer(p)
