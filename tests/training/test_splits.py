"""training/splits.py: the folds of a cross-validation are stratified, disjoint, complete
and fixed by their seed."""

import random
from collections import Counter
from pathlib import Path

import pytest

from training.splits import fold_split, stratified_folds

# 4 categories of 23, 17, 9 and 2 files
FILES = [
    (Path(f"c{label}/{i:03d}.jpg"), label)
    for label, n in enumerate((23, 17, 9, 2))
    for i in range(n)
]


def test_folds_are_disjoint_and_cover_every_file_once():
    folds = stratified_folds(FILES, 5, seed=0)

    assert len(folds) == 5
    dealt = [item for fold in folds for item in fold]
    assert sorted(dealt) == sorted(FILES)
    assert len(set(dealt)) == len(FILES)


def test_each_fold_holds_each_categorys_share():
    folds = stratified_folds(FILES, 5, seed=0)

    sizes = [len(fold) for fold in folds]
    assert max(sizes) - min(sizes) <= 1
    for label, n in enumerate((23, 17, 9, 2)):
        per_fold = [sum(1 for _, lab in fold if lab == label) for fold in folds]
        assert sum(per_fold) == n
        assert max(per_fold) - min(per_fold) <= 1, (label, per_fold)


def test_folds_depend_on_the_seed_only_not_the_listing_order():
    shuffled = FILES[:]
    random.Random(3).shuffle(shuffled)

    assert stratified_folds(shuffled, 5, seed=7) == stratified_folds(FILES, 5, seed=7)
    assert stratified_folds(FILES, 5, seed=8) != stratified_folds(FILES, 5, seed=7)


@pytest.mark.parametrize("fold", [1, 2, 3])
def test_a_fold_split_trains_on_the_other_folds(fold):
    folds = stratified_folds(FILES, 3, seed=1)

    train, held_out = fold_split(FILES, 3, fold, seed=1)

    assert held_out == folds[fold - 1]
    assert sorted(train) == sorted(item for i, f in enumerate(folds) if i != fold - 1 for item in f)
    assert not set(train) & set(held_out)
    assert Counter(label for _, label in held_out) == Counter(label for _, label in folds[fold - 1])


def test_every_file_is_held_out_by_exactly_one_fold():
    held_out = [item for fold in range(1, 5) for item in fold_split(FILES, 4, fold, seed=2)[1]]

    assert sorted(held_out) == sorted(FILES)
