import numpy as np
import pytest

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.split import STANDARD_SPLITS, UNKNOWN, OpenSetSplit, choose_classes
from anomaly_repr.errors import ConfigError, DataError

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
LABELS = np.repeat(np.arange(10), 50)  # 50 images per class
DIGITS = [str(i) for i in range(10)]


def make(**kw) -> OpenSetSplit:
    return OpenSetSplit.make(ExperimentConfig(**kw), LABELS, DIGITS)


def test_parts_are_disjoint_and_cover_the_chosen_classes():
    s = make(seed=3)
    parts = [set(s.train), set(s.val), set(s.test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert set().union(*parts) == set(range(len(LABELS)))


def test_stratified_60_20_20_per_class():
    s = make(seed=1)
    for c in range(10):
        assert [(LABELS[p] == c).sum() for p in (s.train, s.val, s.test)] == [30, 10, 10]


def test_reproducible_by_seed_and_different_across_seeds():
    a, b, c = make(seed=5), make(seed=5), make(seed=6)
    assert a.hash == b.hash and np.array_equal(a.train, b.train)
    assert a.hash != c.hash and not np.array_equal(a.train, c.train)
    assert a.known == c.known  # the training seed does not change the class draw


def test_relabelling_and_anomalies_absent_from_training_views():
    s = make(known_classes="3,1,4")
    assert s.known == ["3", "1", "4"]
    open_labels = s.open_labels(LABELS)
    assert set(open_labels[LABELS == 3]) == {0} and set(open_labels[LABELS == 1]) == {1}
    assert set(open_labels[LABELS == 9]) == {UNKNOWN}
    for view in (s.nominal(s.train, LABELS), s.nominal(s.val, LABELS)):
        assert set(LABELS[view]) == {1, 3, 4}
    assert (open_labels[s.test] == UNKNOWN).any()  # the test split keeps its anomalies


def test_known_classes_by_name_index_and_standard_split():
    cfg = ExperimentConfig(dataset="cifar10", split=2)
    known, unknown = choose_classes(cfg, CIFAR10)
    assert known == [CIFAR10[i] for i in STANDARD_SPLITS["cifar10"][2]]
    assert sorted(known + unknown) == sorted(CIFAR10)
    assert choose_classes(ExperimentConfig(dataset="cifar10"), CIFAR10)[0] == \
        ["airplane", "frog", "deer", "truck", "automobile", "horse"]
    by_name = choose_classes(ExperimentConfig(dataset="cifar10", known_classes="cat,dog"), CIFAR10)
    by_index = choose_classes(ExperimentConfig(dataset="cifar10", known_classes="3,5"), CIFAR10)
    assert by_name == by_index == (["cat", "dog"], [c for c in CIFAR10 if c not in ("cat", "dog")])


def test_an_image_folder_of_the_cifar10_classes_takes_their_standard_splits():
    for split in (0, 2, 3):
        folder = choose_classes(ExperimentConfig(dataset="imagefolder", split=split), CIFAR10)
        assert folder == choose_classes(ExperimentConfig(dataset="cifar10", split=split), CIFAR10)
    with pytest.raises(ConfigError, match="cifar10 has standard splits 0..4, got split=5"):
        choose_classes(ExperimentConfig(dataset="imagefolder", split=5), CIFAR10)
    # other classes, or the same ones in another order, are no CIFAR-10: a seeded draw
    shuffled = [*CIFAR10[1:], CIFAR10[0]]
    assert len(choose_classes(ExperimentConfig(dataset="imagefolder", split=5), shuffled)[0]) == 6


def test_seeded_random_draw_sizes():
    known, unknown = choose_classes(ExperimentConfig(split=4), DIGITS)
    assert len(known) == 6 and len(unknown) == 4
    assert known == choose_classes(ExperimentConfig(split=4, seed=9), DIGITS)[0]
    assert known != choose_classes(ExperimentConfig(split=5), DIGITS)[0]
    hundred = [f"c{i}" for i in range(100)]
    assert len(choose_classes(ExperimentConfig(dataset="cifar100"), hundred)[0]) == 80


def test_explicit_unknown_classes_leave_the_rest_out():
    s = make(known_classes="0,1", unknown_classes="2")
    assert set(LABELS[np.concatenate([s.train, s.val, s.test])]) == {0, 1, 2}


@pytest.mark.parametrize("kw, message", [
    ({"known_classes": "0,11"}, "out of range"),
    ({"known_classes": "0,seven"}, "unknown known class 'seven'"),
    ({"known_classes": "0,1", "unknown_classes": "1,2"}, "class '1' is both known and unknown"),
    ({"known_classes": "0"}, "at least two known classes"),
    ({"num_known": 10}, "no unknown class"),
    ({"known_classes": "1,1,2"}, "twice"),
])
def test_bad_class_choices(kw, message):
    with pytest.raises(ConfigError, match=message):
        make(**kw)


def test_standard_split_out_of_range():
    with pytest.raises(ConfigError, match="standard splits 0..4"):
        choose_classes(ExperimentConfig(dataset="cifar10", split=5), CIFAR10)


def test_the_hash_of_a_split_without_left_out_files_is_unchanged():
    # Values logged by the project before files could be left out: existing runs must stay comparable.
    assert make().hash == "63ee257c6d0a76b7" and make(seed=3, split=2).hash == "ed4d6486e658e1a5"
    assert "left_out" not in make().to_dict()


def test_left_out_files_are_in_the_manifest_and_the_hash():
    s = OpenSetSplit.make(ExperimentConfig(), LABELS, DIGITS, left_out=("moth/broken.jpg",))
    assert s.to_dict()["left_out"] == ["moth/broken.jpg"] and s.hash != make().hash
    assert OpenSetSplit.from_dict(s.to_dict()).left_out == ("moth/broken.jpg",)


def test_manifest_round_trip_checks_its_hash():
    s = make(seed=2)
    again = OpenSetSplit.from_dict(s.to_dict())
    assert again.hash == s.hash and np.array_equal(again.test, s.test)
    tampered = s.to_dict()
    tampered["test"] = tampered["test"][:-1]
    with pytest.raises(ConfigError, match="hash mismatch"):
        OpenSetSplit.from_dict(tampered)


def test_too_few_images_per_class_is_named():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    with pytest.raises(DataError, match="class '1' has 3 images"):
        OpenSetSplit.make(ExperimentConfig(known_classes="0,1"), labels, ["0", "1", "2"])
