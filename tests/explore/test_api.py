"""The explorer's JSON / PNG API through Starlette's TestClient: pixel checks of the masked and pasted
pictures against the original, neighbours, a run without a decoder, bad input."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from mimkit.cli import main  # noqa: E402
from mimkit.explore.app import create_app, open_socket  # noqa: E402

FMNIST = "/usr/share/datasets/fashion-mnist"
GRID, PATCH = 7, 4  # the tiny run: 28 px images, 4 px patches


def decode(picture: bytes | str) -> np.ndarray:
    if isinstance(picture, str):
        picture = base64.b64decode(picture.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(picture)))


def pixel_mask(hidden: list[int]) -> np.ndarray:
    """[28, 28] bool, True over the hidden patches, built by hand from the row-by-row patch order."""
    out = np.zeros((GRID * PATCH, GRID * PATCH), dtype=bool)
    for i in hidden:
        r, c = divmod(i, GRID)
        out[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = True
    return out


@pytest.fixture(scope="module")
def client(explorer):
    return TestClient(create_app(explorer))


def test_info_and_page(client):
    info = client.get("/api/info").json()
    assert info["grid"] == [GRID, GRID] and info["patch_size"] == PATCH and info["depth"] == 2
    assert info["splits"] == {"test": 16, "train": 48} and info["no_reconstruction"] is None
    page = client.get("/")
    assert (
        page.status_code == 200
        and 'id="mask-grid"' in page.text
        and "http" not in page.text.split("<script>")[1]
    )


def test_masked_picture_hides_exactly_the_clicked_patches(client, explorer):
    hidden = [0, 10, 24, 48]
    mask = [1 if i in hidden else 0 for i in range(GRID * GRID)]
    original = decode(client.get("/api/image/test/3").content)
    out = client.post("/api/reconstruct", json={"split": "test", "index": 3, "seed": 0, "mask": mask}).json()
    assert out["mask"] == mask
    masked, pasted = decode(out["panels"]["masked"]), decode(out["panels"]["pasted"])
    recon = decode(out["panels"]["reconstruction"])
    where = pixel_mask(hidden)
    # hidden pixels: zero in normalised space, i.e. the data's mean grey; visible ones: the original's
    mean_grey = round(explorer.splits["test"].dataset.mean[0] * 255)
    assert (masked[where] == mean_grey).all() and (original[where] != mean_grey).any()
    assert (masked[~where] == original[~where]).all()
    # MAE pastes the visible patches over its reconstruction
    assert (pasted[~where] == original[~where]).all() and (pasted[where] == recon[where]).all()


def test_a_click_changes_the_reconstruction_and_a_drawn_mask_has_maes_count(client):
    drawn = client.post("/api/reconstruct", json={"index": 1, "seed": 5, "ratio": 0.75}).json()
    assert sum(drawn["mask"]) == 49 - int(49 * 0.25)  # MAE keeps int(L * (1 - ratio)) = 12 patches
    same = client.post("/api/reconstruct", json={"index": 1, "seed": 5, "ratio": 0.75}).json()
    assert same["mask"] == drawn["mask"] and same["panels"] == drawn["panels"]
    clicked = list(drawn["mask"])
    clicked[clicked.index(0)] = 1  # hide one more patch
    after = client.post("/api/reconstruct", json={"index": 1, "seed": 5, "mask": clicked}).json()
    assert after["panels"]["reconstruction"] != drawn["panels"]["reconstruction"]


def test_neighbours_start_with_the_image_itself(client):
    found = client.get("/api/neighbours", params={"split": "train", "index": 7, "k": 5}).json()["neighbours"]
    assert (found[0]["split"], found[0]["index"]) == ("train", 7) and abs(found[0]["distance"]) < 1e-4
    distances = [n["distance"] for n in found]
    assert distances == sorted(distances) and len(found) == 5


def test_attention_maps_are_pictures_of_the_image(client, explorer):
    maps = client.get("/api/attention", params={"split": "test", "index": 0, "block": 1}).json()["maps"]
    assert len(maps) == 1 + 2  # the mean of the heads, then each of the 2 heads
    assert all(decode(m).shape == (28, 28, 3) for m in maps)
    from mimkit.viz import attention_maps

    weights = attention_maps(explorer.encoder, explorer._image("test", 0), -1)
    # softmax rows over 1 + 49 tokens: the patches' share is positive and below 1
    total = weights.sum(dim=(-2, -1))
    assert weights.shape == (1, 2, GRID, GRID) and ((total > 0) & (total < 1)).all()


def test_refusals_are_one_line(client):
    r = client.get("/api/image/test/16")
    assert r.status_code == 400 and r.json()["error"] == "index must be in [0, 15] for the test split, got 16"
    r = client.post("/api/reconstruct", json={"index": 0, "mask": [0, 1]})
    assert r.status_code == 400 and "49 values" in r.json()["error"]
    r = client.get("/api/attention", params={"index": 0, "block": 2})
    assert r.status_code == 400 and "an index in [-2, 1]" in r.json()["error"]


def test_port_in_use_and_missing_run(capsys, tmp_path):
    taken = open_socket("127.0.0.1", 0)
    port = taken.getsockname()[1]
    taken.listen()
    try:
        with pytest.raises(
            ValueError, match=f"^port {port} on 127.0.0.1 is in use: choose another with --port$"
        ):
            open_socket("127.0.0.1", port)
    finally:
        taken.close()
    assert main(["explore", str(tmp_path / "nope"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope" in err and "does not exist" in err


def test_an_encoder_file_explores_without_reconstruction(tmp_path, caplog):
    from mimkit.explore import ExploreOptions, Explorer
    from mimkit.models import create_encoder
    from mimkit.weights import export_encoder_safetensors

    path = export_encoder_safetensors(create_encoder("vit_tiny_patch4_28"), tmp_path / "enc.safetensors")
    options = ExploreOptions(
        encoder_name="vit_tiny_patch4_28", data_root=FMNIST, train_limit=8, test_limit=4, use_cache=False
    )
    with caplog.at_level("INFO", logger="mimkit"):
        explorer = Explorer(str(path), options)
    assert "encoder alone" in explorer.info()["no_reconstruction"]
    assert [r.message for r in caplog.records if "reconstruction is off" in r.message]
    with pytest.raises(ValueError, match="reconstruction is off"):
        explorer.reconstruction("test", 0)
    assert explorer.neighbours("test", 2, 1)[0]["index"] == 2


def test_the_embeddings_come_from_knns_feature_cache(explore_run, caplog):
    from mimkit.explore import ExploreOptions, Explorer

    assert main(["knn", str(explore_run), "--k", "5", "--train-limit", "48", "--test-limit", "16"]) == 0
    with caplog.at_level("INFO", logger="mimkit"):
        Explorer(str(explore_run), ExploreOptions(train_limit=48, test_limit=16))
    assert sum("features from the cache" in r.message for r in caplog.records) == 2  # both splits
    assert not [r for r in caplog.records if "features cached" in r.message]
