"""classifier/predict.py: the main and sub category a user sees always agree."""

import numpy as np
import pytest
import torch
from model_support import save_scaled_model
from PIL import Image

from classifier import predict
from classifier.checkpoint import load_checkpoint
from classifier.predict import (
    Classifier,
    decide,
    joint_probabilities,
    resolve_device,
    resolve_precision,
)
from refund_sorter.errors import UserError


def random_tree(rng: np.random.Generator) -> list[int]:
    """sub_to_main for a random tree: 2-5 main categories with 1-4 subs each."""
    n_main = int(rng.integers(2, 6))
    return [m for m in range(n_main) for _ in range(int(rng.integers(1, 5)))]


def test_joint_decision_is_always_consistent_for_random_logits():
    rng = np.random.default_rng(1234)
    for _ in range(50):  # 50 random trees x 64 rows of logits
        tree = random_tree(rng)
        n_main, n_sub, batch = max(tree) + 1, len(tree), 64
        sub_to_main = torch.tensor(tree)
        scale = float(rng.uniform(0.1, 10))
        main_logits = torch.from_numpy(rng.normal(0, scale, (batch, n_main))).float()
        sub_logits = torch.from_numpy(rng.normal(0, scale, (batch, n_sub))).float()

        joint = joint_probabilities(main_logits, sub_logits, sub_to_main)
        sub_idx, sub_conf, main_idx, main_conf = decide(joint, sub_to_main, n_main)

        assert joint.shape == (batch, n_sub)
        torch.testing.assert_close(joint.sum(1), torch.ones(batch))
        assert torch.equal(sub_to_main[sub_idx], main_idx), "sub must belong to the main"
        assert bool((sub_conf <= main_conf + 1e-6).all())
        assert bool(((sub_conf > 0) & (main_conf <= 1 + 1e-6)).all())
        # The numbers follow the documented rule, computed here independently.
        p_main = main_logits.softmax(1).numpy()
        p_sub = sub_logits.softmax(1).numpy()
        expected = p_main[:, tree] * p_sub
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(joint.numpy(), expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(sub_idx.numpy(), expected.argmax(1))
        np.testing.assert_allclose(sub_conf.numpy(), expected.max(1), rtol=1e-4)
        main_mass = expected @ np.eye(n_main)[tree]  # (batch, n_main): joint summed per main
        np.testing.assert_allclose(
            main_conf.numpy(), main_mass[np.arange(batch), main_idx.numpy()], rtol=1e-4
        )


# mains: bottoms, tops; subs: jeans, skirt (bottoms), shirt (tops)
SUB_TO_MAIN = torch.tensor([0, 0, 1])


def test_a_confident_main_head_outweighs_a_hesitant_sub_head():
    # The sub head leans to "shirt" (0.55), but the main head is sure it is a bottom (0.95).
    main_logits = torch.log(torch.tensor([[0.95, 0.05]]))
    sub_logits = torch.log(torch.tensor([[0.30, 0.15, 0.55]]))

    joint = joint_probabilities(main_logits, sub_logits, SUB_TO_MAIN)
    sub_idx, sub_conf, main_idx, main_conf = decide(joint, SUB_TO_MAIN, 2)

    assert int(sub_logits.argmax()) == 2 and int(main_logits.argmax()) == 0  # heads disagree
    assert (int(main_idx), int(sub_idx)) == (0, 0)  # bottoms / jeans
    # 0.95*0.30, 0.95*0.15, 0.05*0.55 renormalised
    total = 0.95 * 0.30 + 0.95 * 0.15 + 0.05 * 0.55
    assert float(sub_conf) == pytest.approx(0.95 * 0.30 / total, abs=1e-5)
    assert float(main_conf) == pytest.approx(0.95 * 0.45 / total, abs=1e-5)


def test_a_confident_sub_head_can_overrule_the_main_head():
    # The main head slightly prefers bottoms (0.6), the sub head is sure of "shirt" (0.9).
    main_logits = torch.log(torch.tensor([[0.6, 0.4]]))
    sub_logits = torch.log(torch.tensor([[0.05, 0.05, 0.90]]))

    joint = joint_probabilities(main_logits, sub_logits, SUB_TO_MAIN)
    sub_idx, _, main_idx, main_conf = decide(joint, SUB_TO_MAIN, 2)

    assert (int(main_idx), int(sub_idx)) == (1, 2)  # tops / shirt, not the main head's bottoms
    total = 0.6 * 0.05 * 2 + 0.4 * 0.9
    assert float(main_conf) == pytest.approx(0.4 * 0.9 / total, abs=1e-5)


def photos() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    sizes = [(40, 40), (64, 30), (17, 90), (200, 120)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")
        for w, h in sizes
    ]


@pytest.mark.model
def test_classifier_predictions_are_consistent_with_the_taxonomy(random_checkpoint):
    clf = Classifier.from_path(random_checkpoint, device="cpu")
    tax = clf.taxonomy

    predictions = clf.predict_images(photos())

    assert len(predictions) == 4
    for p in predictions:
        assert p.main in tax.main
        assert tax.index_of(p.main, p.sub) is not None, f"{p.sub} is not under {p.main}"
        assert 0.0 < p.sub_confidence <= p.main_confidence + 1e-6
        assert p.main_confidence <= 1.0 + 1e-6
    assert clf.version == load_checkpoint(random_checkpoint).version
    assert len(clf.version) == 12


@pytest.mark.model
def test_the_next_best_sub_categories_start_with_the_decision(random_checkpoint):
    clf = Classifier.from_path(random_checkpoint, device="cpu")
    tax = clf.taxonomy

    for p in clf.predict_images(photos()):
        assert len(p.top_subs) == 3  # of the 4 sub categories
        assert p.top_subs[0] == (p.main, p.sub, pytest.approx(p.sub_confidence))
        probabilities = [prob for _, _, prob in p.top_subs]
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1.0 + 1e-6
        assert len({sub for _, sub, _ in p.top_subs}) == 3
        for main, sub, _ in p.top_subs:
            assert tax.index_of(main, sub) is not None, f"{sub} is not under {main}"


@pytest.mark.model
def test_a_prediction_does_not_depend_on_the_rest_of_the_batch(random_checkpoint):
    clf = Classifier.from_path(random_checkpoint, device="cpu")
    images = photos()

    together = clf.predict_images(images)
    alone = [clf.predict_images([img])[0] for img in images]

    for a, b in zip(together, alone, strict=True):
        assert a.sub_confidence == pytest.approx(b.sub_confidence, abs=0.02)
        assert a.main_confidence == pytest.approx(b.main_confidence, abs=0.02)


@pytest.mark.model
def test_an_empty_batch_gives_no_predictions(random_checkpoint):
    assert Classifier.from_path(random_checkpoint, device="cpu").predict_images([]) == []


def test_asking_for_cuda_without_a_gpu_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_auto_precision_uses_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(predict, "native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(predict, "native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert [resolve_precision(p, cpu) for p in ("fp32", "bf16")] == ["fp32", "bf16"]
    with pytest.raises(UserError, match="fp16 runs on CUDA only"):
        resolve_precision("fp16", cpu)


@pytest.mark.model
def test_each_cpu_precision_classifies_and_agrees_with_fp32(random_checkpoint):
    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(8)]
    by_precision = {}
    for precision in ("fp32", "bf16"):
        clf = Classifier.from_path(random_checkpoint, device="cpu", precision=precision)
        assert clf.precision == precision
        by_precision[precision] = clf.predict_images(images)
    for fp32, bf16 in zip(by_precision["fp32"], by_precision["bf16"], strict=True):
        assert abs(fp32.sub_confidence - bf16.sub_confidence) < 0.05


# --- calibration at inference ------------------------------------------------------------------


@pytest.mark.model
def test_the_stored_temperature_undoes_scaled_logits(random_checkpoint, tmp_path):
    save_scaled_model(random_checkpoint, tmp_path / "hot.pt", 4.0)
    save_scaled_model(random_checkpoint, tmp_path / "calibrated.pt", 4.0, temperature=4.0)
    images = photos()

    plain = Classifier.from_path(random_checkpoint, device="cpu", precision="fp32")
    hot = Classifier.from_path(tmp_path / "hot.pt", device="cpu", precision="fp32")
    calibrated = Classifier.from_path(tmp_path / "calibrated.pt", device="cpu", precision="fp32")

    assert (plain.temperature, hot.temperature, calibrated.temperature) == (1.0, 1.0, 4.0)
    for p, h, c in zip(
        plain.predict_images(images),
        hot.predict_images(images),
        calibrated.predict_images(images),
        strict=True,
    ):
        assert (p.main, p.sub) == (h.main, h.sub) == (c.main, c.sub)
        assert h.sub_confidence > p.sub_confidence + 0.05  # overconfident
        assert c.sub_confidence == pytest.approx(p.sub_confidence, abs=2e-3)
        assert c.main_confidence == pytest.approx(p.main_confidence, abs=2e-3)


def test_a_temperature_never_changes_the_decision():
    rng = np.random.default_rng(9)
    sub_to_main = torch.tensor([0, 0, 1, 1, 1, 2])
    main_logits = torch.from_numpy(rng.normal(0, 3, (200, 3))).float()
    sub_logits = torch.from_numpy(rng.normal(0, 3, (200, 6))).float()

    decisions = [
        decide(joint_probabilities(main_logits, sub_logits, sub_to_main, t), sub_to_main, 3)
        for t in (0.3, 1.0, 2.5, 10.0)
    ]

    for sub_idx, _, main_idx, _ in decisions[1:]:
        assert torch.equal(sub_idx, decisions[0][0])
        assert torch.equal(main_idx, decisions[0][2])
    confidences = [float(d[1].mean()) for d in decisions]
    assert confidences == sorted(confidences, reverse=True)  # hotter is less sure


@pytest.mark.model
def test_the_review_threshold_is_the_setting_when_given_else_the_models(
    random_checkpoint, tmp_path
):
    save_scaled_model(random_checkpoint, tmp_path / "chosen.pt", 1.0, review_threshold=0.42)

    def threshold(path, setting=None) -> float:
        return Classifier.from_path(path, "cpu", review_threshold=setting).review_threshold

    assert threshold(random_checkpoint) == 0.6  # a model that chose none
    assert threshold(tmp_path / "chosen.pt") == threshold(tmp_path / "chosen.pt", None) == 0.42
    assert threshold(tmp_path / "chosen.pt", 0.9) == 0.9
    assert threshold(tmp_path / "chosen.pt", 0.0) == 0.0  # zero is a setting too, not "unset"


@pytest.mark.model
def test_a_prediction_needs_review_below_the_threshold_in_force(random_checkpoint):
    def predictions(setting=None):
        clf = Classifier.from_path(random_checkpoint, "cpu", review_threshold=setting)
        return clf.predict_images(photos())

    unset = predictions()
    assert [p.needs_review for p in unset] == [p.sub_confidence < 0.6 for p in unset]
    confidences = sorted(p.sub_confidence for p in unset)
    middle = (confidences[0] + confidences[-1]) / 2
    for setting, flagged in ((0.0, {False}), (middle, {False, True}), (1.0, {True})):
        got = predictions(setting)
        assert [p.needs_review for p in got] == [p.sub_confidence < setting for p in got]
        assert {p.needs_review for p in got} == flagged


@pytest.mark.model
def test_logits_come_in_batches_and_match_the_decisions(random_checkpoint):
    clf = Classifier.from_path(random_checkpoint, device="cpu", precision="fp32")
    images = torch.stack([clf.preset(img) for img in photos()])

    main_logits, sub_logits = clf.logits(images, batch_size=3)

    assert main_logits.shape == (4, 2) and sub_logits.shape == (4, 4)
    joint = joint_probabilities(main_logits, sub_logits, clf.sub_to_main)
    sub_idx, sub_conf, _, _ = decide(joint, clf.sub_to_main, 2)
    predictions = clf.predict_tensors(images)
    assert [clf.taxonomy.sub[i] for i in sub_idx.tolist()] == [p.sub for p in predictions]
    assert sub_conf.tolist() == pytest.approx([p.sub_confidence for p in predictions], abs=1e-5)
    empty_main, empty_sub = clf.logits(images[:0])
    assert empty_main.shape == (0, 2) and empty_sub.shape == (0, 4)
