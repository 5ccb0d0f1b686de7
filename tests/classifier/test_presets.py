"""classifier/presets.py and the training batches: the recipe's augmentations do what their
options say, and mixed targets stay consistent across the two heads."""

import pytest
import torch

from classifier.data import LoadedImages
from classifier.network import IMAGENET_MEAN, TF_LITE_MEAN
from classifier.presets import EvalPreset, MixupCutmix, TrainPreset, erase_fill, mixed_targets
from classifier.train import Batches, augmented
from refund_sorter.errors import UserError

SUB_TO_MAIN = torch.tensor([0, 0, 1, 1, 1])


def per_main(sub_targets: torch.Tensor) -> torch.Tensor:
    """Sub targets summed over each main category's subs."""
    return sub_targets @ torch.nn.functional.one_hot(SUB_TO_MAIN, 2).float()


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.2, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_targets_are_probabilities_and_agree_across_the_heads(mixup, cutmix):
    torch.manual_seed(0)
    mix = MixupCutmix(mixup, cutmix, n_main=2, n_sub=5)
    for _ in range(20):
        images = torch.randn(8, 3, 16, 16)
        sub_y = torch.randint(5, (8,))
        main_y = SUB_TO_MAIN[sub_y]

        mixed, main_t, sub_t = mix(images, main_y, sub_y)

        assert mixed.shape == images.shape
        assert main_t.shape == (8, 2) and sub_t.shape == (8, 5)
        torch.testing.assert_close(sub_t.sum(1), torch.ones(8))
        torch.testing.assert_close(main_t.sum(1), torch.ones(8))
        assert bool((sub_t >= 0).all())
        # The main target is exactly the sub target's mass per main category.
        torch.testing.assert_close(main_t, per_main(sub_t))


def test_mixup_blends_each_image_with_the_previous_one_by_lambda():
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2).clone()
    labels = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)

    mixed, _, sub_t = MixupCutmix(0.5, 0.0, n_main=2, n_sub=5)(images, SUB_TO_MAIN[labels], labels)

    lam = float(sub_t[0, 0])
    assert 0 < lam < 1
    partners = images.roll(1, 0)
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * partners)
    assert float(sub_t[0, 3]) == pytest.approx(1 - lam)  # image 0's partner is image 3


def test_cutmix_targets_follow_the_area_pasted():
    images = torch.zeros(4, 3, 20, 20)
    images[1::2] = 1.0  # odd images are ones, their partners zeros and vice versa
    labels = torch.tensor([0, 1, 0, 1])
    torch.manual_seed(2)
    for _ in range(10):
        mixed, _, sub_t = MixupCutmix(0.0, 1.0, n_main=2, n_sub=5)(
            images, SUB_TO_MAIN[labels], labels
        )
        # Image 0 is zeros with a box of ones from image 3: the share of ones is 1 - lam.
        pasted = float(mixed[0, 0].mean())
        assert float(sub_t[0, 1]) == pytest.approx(pasted)
        assert float(sub_t[0, 0]) == pytest.approx(1 - pasted)


def test_mixed_targets_of_a_single_pair():
    targets = mixed_targets(torch.tensor([2, 0]), 3, 0.7)

    torch.testing.assert_close(targets, torch.tensor([[0.3, 0.0, 0.7], [0.7, 0.0, 0.3]]))


def test_mixing_needs_an_alpha():
    with pytest.raises(ValueError, match="above 0"):
        MixupCutmix(0.0, 0.0, n_main=2, n_sub=5)


@pytest.mark.parametrize("auto_augment", ["none", "ta_wide", "ra"])
def test_each_auto_augment_gives_uint8_images_of_the_training_size(auto_augment):
    torch.manual_seed(3)
    preset = TrainPreset(32, IMAGENET_MEAN, auto_augment=auto_augment)
    square = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)

    out = preset(square)

    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)


@pytest.mark.parametrize("mean", [IMAGENET_MEAN, TF_LITE_MEAN])
def test_random_erase_paints_a_rectangle_in_the_backbones_mean_colour(mean):
    torch.manual_seed(4)
    preset = TrainPreset(32, mean, random_erase=1.0)
    black = torch.zeros(3, 40, 40, dtype=torch.uint8)  # colour jitter leaves black as it is

    for _ in range(5):
        out = preset(black)
        painted = (out == torch.tensor(erase_fill(mean), dtype=torch.uint8).view(3, 1, 1)).all(0)
        assert 0 < int(painted.sum()) < 32 * 32
        assert int(((out == 0).all(0) | painted).sum()) == 32 * 32


def test_a_resize_rule_this_code_does_not_know_is_refused():
    with pytest.raises(UserError, match="'crop', which this refund-sorter does not know"):
        EvalPreset(32, "crop")


def test_no_random_erase_by_default():
    torch.manual_seed(5)
    out = TrainPreset(32, IMAGENET_MEAN)(torch.zeros(3, 40, 40, dtype=torch.uint8))

    assert int(out.sum()) == 0


def batches(labels: list[int], balanced: bool) -> Batches:
    n = len(labels)
    data = LoadedImages(torch.zeros(n, 3, 8, 8, dtype=torch.uint8), torch.tensor(labels))
    draw = augmented(data.images, TrainPreset(8, IMAGENET_MEAN))
    return Batches(data.labels, 10, draw, SUB_TO_MAIN, balanced=balanced)


def test_balanced_sampling_draws_every_sub_category_equally_often():
    labels = [0] * 90 + [3] * 10  # 9 to 1
    torch.manual_seed(6)

    drawn = torch.cat([batches(labels, balanced=True).order() for _ in range(50)])

    assert len(drawn) == 50 * 100
    share_rare = float((torch.tensor(labels)[drawn] == 3).double().mean())
    assert share_rare == pytest.approx(0.5, abs=0.03)


def test_plain_sampling_shows_each_image_once_per_pass():
    labels = [0] * 90 + [3] * 10

    order = batches(labels, balanced=False).order()

    assert sorted(order.tolist()) == list(range(100))
