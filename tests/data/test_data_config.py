import pytest

from mimkit.data import DataConfig
from mimkit.data.config import FASHION_MNIST_ROOT


@pytest.mark.parametrize(
    "field, value, valid",
    [
        ("source", "fashon_mnist", "fashion_mnist"),
        ("normalize", "imagnet", "imagenet"),
        ("normalize", [[0.5], [0.0]], "std > 0"),
        ("normalize", [[0.5, 0.5], [0.2]], "[[means], [stds]]"),
        ("augment", "mea", "simmim"),
        ("channels", 0, "positive int or 'native'"),
        ("channels", "rgb", "positive int or 'native'"),
        ("bands", [3, -1], "band indices >= 0"),
        ("bands", [], "non-empty"),
        ("window", [40, 0], "width must be >= 1"),
        ("window", [40, -400], "width must be >= 1"),
        ("window", "auto", "'voi'"),
        ("clip", [99.5, 0.5], "low < high"),
        ("clip", [[0, 10], [5]], "[[lows], [highs]]"),
        ("img_size", 0, "positive"),
        ("img_size", [28, 28, 3], "[H, W]"),
        ("crop_scale", [0.8, 0.2], "a <= b"),
        ("crop_scale", [0.2, 1.5], "a <= b <= 1"),
        ("labeled", "yes", "'auto'"),
        ("limit", 0, "positive"),
        ("num_workers", -1, ">= 0"),
        ("in_memory", "maybe", "'auto'"),
        ("resize_mode", "fit", "center_crop"),
    ],
)
def test_bad_value_is_named_with_the_valid_options(field, value, valid):
    with pytest.raises(ValueError) as err:
        DataConfig(**{field: value})
    message = str(err.value)
    assert repr(value) in message and field in message and valid in message
    assert "\n" not in message


def test_crop_override_without_cropping_preset_is_an_error():
    with pytest.raises(ValueError, match="augment='none'"):
        DataConfig(augment="none", crop_scale=[0.5, 1.0])


def test_mnist_with_the_fashion_mnist_root_is_an_error():
    with pytest.raises(ValueError, match="source='mnist'") as err:
        DataConfig(source="mnist")
    assert FASHION_MNIST_ROOT in str(err.value)


def test_valid_values_are_accepted():
    cfg = DataConfig(
        source="folder",
        root="/some/where",
        img_size=[32, 48],
        channels=3,
        labeled=False,
        normalize=[[0.5, 0.4, 0.3], [0.2, 0.2, 0.2]],
        augment="simmim",
        crop_scale=[0.5, 1.0],
        crop_ratio=[0.75, 1.3333],
        limit=10,
        in_memory=True,
    )
    assert cfg.img_size == [32, 48] and cfg.normalize[0] == [0.5, 0.4, 0.3]
