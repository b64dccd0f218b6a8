"""Batched on-device augmentation, training/eval loaders, the class-aware sampler (METHODS.md §1.4–1.6)."""
from __future__ import annotations

import io
import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from engine.loaders import TrainLoader, augment_batch, balanced_subset, eval_batches
from engine.samplers import SAMPLERS, ClassAwareSampler


def _random_images(n: int, c: int = 3, hw: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, c, hw, hw), generator=gen, dtype=torch.uint8)  # no zeros


def _all_views(images: torch.Tensor, pad: int, flip: bool) -> tuple[torch.Tensor, list[tuple[int, int, int, bool]]]:
    """Every crop (and mirror) of every zero-padded image, brute force, with its (i, top, left, flipped)."""
    n, c, h, w = images.shape
    padded = F.pad(images.float(), (pad, pad, pad, pad)).to(torch.uint8)
    k = 2 * pad + 1
    crops = padded.unfold(2, h, 1).unfold(3, w, 1)  # (n, c, top, left, h, w)
    crops = crops.permute(0, 2, 3, 1, 4, 5).reshape(n * k * k, c, h, w)
    keys = [(i, top, left, False) for i in range(n) for top in range(k) for left in range(k)]
    if not flip:
        return crops, keys
    return torch.cat([crops, crops.flip(3)]), keys + [(i, t, l, True) for i, t, l, _ in keys]


def _match(batch_u8: torch.Tensor, views: torch.Tensor, keys: list) -> list[tuple[int, int, int, bool]]:
    dist = torch.cdist(
        batch_u8.flatten(1).double(), views.flatten(1).to(torch.float64), compute_mode="donot_use_mm_for_euclid_dist"
    )
    best, where = dist.min(1)
    assert bool((best == 0).all()), "an augmented image is not a padded crop (or mirror) of any source image"
    return [keys[i] for i in where.tolist()]

# ---------------------------------------------------------------- augmentation


def test_crop_flip_batches_are_padded_crops_of_the_right_images(bundle_factory):
    images = _random_images(12)
    labels = torch.arange(12) % 4
    loader = TrainLoader(bundle_factory(images, labels, 4), 12, None, seed=3, device="cpu", drop_last=False)
    views, keys = _all_views(images, 4, True)
    views = views.flatten(1).double()
    seen = []
    for _ in range(6):
        for x, y in loader:
            assert x.dtype == torch.float32 and x.shape == (12, 3, 32, 32)
            assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
            back = torch.round(x * 255).to(torch.uint8)
            assert torch.equal(back.float() / 255, x)
            for (i, top, left, flipped), label in zip(_match(back, views, keys), y.tolist()):
                assert label == int(labels[i])
                seen.append((top, left, flipped))
    flips = sum(f for _, _, f in seen)
    assert 0.25 * len(seen) < flips < 0.75 * len(seen)
    assert {t for t, _, _ in seen} >= {0, 8} and len({(t, l) for t, l, _ in seen}) > 20


def test_zero_padding_is_visible(bundle_factory):
    images = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    loader = TrainLoader(bundle_factory(images, torch.zeros(64, dtype=torch.long), 1), 64, None, 0, "cpu")
    (x, _), = list(loader)
    zero_rows = (x == 0).all(dim=(1, 3))  # (B, H): rows made only of padding
    zero_cols = (x == 0).all(dim=(1, 2))
    assert zero_rows.any() and zero_cols.any()
    assert int(zero_rows.sum(1).max()) <= 4 and int(zero_cols.sum(1).max()) <= 4
    assert set(torch.unique(x).tolist()) == {0.0, 1.0}


def test_digits_crop_never_flips(bundle_factory):
    images = torch.randint(1, 17, (10, 1, 8, 8), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    bundle = bundle_factory(images, torch.arange(10), 10, augment="crop", pixel_max=16.0)
    loader = TrainLoader(bundle, 10, None, seed=0, device="cpu")
    views, keys = _all_views(images, 1, flip=False)
    for _ in range(5):
        (x, _), = list(loader)
        assert x.shape == (10, 1, 8, 8) and float(x.max()) <= 1.0
        _match(torch.round(x * 16).to(torch.uint8), views, keys)


def test_augmentation_is_deterministic_for_a_seed(bundle_factory):
    bundle = bundle_factory(_random_images(40), torch.arange(40) % 5, 5)

    def run(seed):
        loader = TrainLoader(bundle, 8, None, seed=seed, device="cpu")
        return [(x.clone(), y.clone()) for _ in range(2) for x, y in loader]

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert any(not torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_augment_batch_none_is_identity():
    x = _random_images(2)
    assert augment_batch(x, "none", torch.Generator()) is x


# ---------------------------------------------------------------- shuffling loader


def test_shuffle_covers_every_image_once_per_epoch(bundle_factory):
    n = 50
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    bundle = bundle_factory(images, torch.zeros(n, dtype=torch.long), 1, augment="none")
    loader = TrainLoader(bundle, 16, None, seed=0, device="cpu", drop_last=False)
    assert len(loader) == 4
    epochs = []
    for _ in range(2):
        ids = [int(v) for x, _ in loader for v in torch.round(x[:, 0, 0, 0] * 255)]
        assert sorted(ids) == list(range(n))
        epochs.append(ids)
    assert epochs[0] != epochs[1]
    dropping = TrainLoader(bundle, 16, None, seed=0, device="cpu")
    sizes = [len(y) for _, y in dropping]
    assert len(dropping) == 3 and sizes == [16, 16, 16]


def _collect(loader, epochs):
    return [torch.cat([x.flatten(), y.float()]) for _ in range(epochs) for x, y in loader]


@pytest.mark.parametrize("sampler", [None, "class_aware"])
def test_resume_mid_epoch_reproduces_the_stream(bundle_factory, sampler):
    labels = torch.tensor([0] * 20 + [1] * 7 + [2] * 3)
    bundle = bundle_factory(_random_images(30, hw=8), labels, 3)
    full = TrainLoader(bundle, 4, sampler, seed=11, device="cpu")
    expected = _collect(full, 3)

    first = TrainLoader(bundle, 4, sampler, seed=11, device="cpu")
    head = _collect(first, 1)
    it = iter(first)
    head += [torch.cat([x.flatten(), y.float()]) for x, y in (next(it), next(it))]
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)  # checkpoints are loaded with weights_only=True
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    resumed = TrainLoader(bundle, 4, sampler, seed=999, device="cpu")  # seed overwritten by state
    resumed.load_state_dict(state)
    tail = _collect(resumed, 2)
    assert len(head) + len(tail) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(head + tail, expected))


def test_class_aware_loader_epoch_length(bundle_factory):
    labels = torch.tensor([0] * 20 + [1] * 7 + [2] * 3)
    loader = TrainLoader(bundle_factory(_random_images(30, hw=8), labels, 3), 4, "class_aware", 0, "cpu")
    assert loader.num_samples == 60 and len(loader) == 15
    ys = torch.cat([y for _, y in loader])
    assert torch.bincount(ys).tolist() == [20, 20, 20]


# ---------------------------------------------------------------- class-aware sampler (§1.6)


class _ReferenceCycle:
    """The reference's cycling iterator on Python's global ``random`` (written from §1.6)."""

    def __init__(self, data):
        self.data = list(data)
        self.i = len(self.data) - 1

    def __next__(self):
        self.i += 1
        if self.i == len(self.data):
            self.i = 0
            random.shuffle(self.data)
        return self.data[self.i]


def _reference_stream(labels, num_classes, draws):
    random.seed(0)
    per_class = [[i for i, y in enumerate(labels) if y == c] for c in range(num_classes)]
    class_iter = _ReferenceCycle(range(num_classes))
    data_iters = [_ReferenceCycle(x) for x in per_class]
    return [next(data_iters[next(class_iter)]) for _ in range(draws)]


LT_LABELS = [0] * 12 + [1] * 6 + [2] * 3 + [3] * 2 + [4] * 1


def test_class_aware_matches_reference_global_random_stream():
    random.seed(12345)
    before = random.getstate()
    sampler = ClassAwareSampler(LT_LABELS, 5, seed=0)
    ours = list(sampler) + list(sampler)
    assert random.getstate() == before, "global random must not move"
    assert ours == _reference_stream(LT_LABELS, 5, 2 * len(sampler))


def test_class_aware_passes_epoch_length_and_repeats():
    sampler = ClassAwareSampler(LT_LABELS, 5, seed=0)
    assert len(sampler) == 12 * 5
    stream = list(sampler) + list(sampler)
    assert len(stream) == 120
    passes = [stream[k : k + 5] for k in range(0, len(stream), 5)]
    assert all(sorted(LT_LABELS[i] for i in p) == [0, 1, 2, 3, 4] for p in passes)
    assert len({tuple(LT_LABELS[i] for i in p) for p in passes}) > 1, "class order reshuffled per pass"
    first_epoch = Counter(stream[:60])
    for c, n_c in enumerate([12, 6, 3, 2, 1]):
        reps = {first_epoch[i] for i, y in enumerate(LT_LABELS) if y == c}
        assert reps <= {12 // n_c, -(-12 // n_c)}, f"class {c} repeats {reps}"


def test_class_aware_determinism_and_state_round_trip():
    a, b, other = (ClassAwareSampler(LT_LABELS, 5, seed=s) for s in (0, 0, 1))
    assert list(a) == list(b) and list(a) != list(other)
    s = ClassAwareSampler(LT_LABELS, 5, seed=0)
    for _ in range(37):
        s.draw()
    state = s.state_dict()
    expected = [s.draw() for _ in range(100)]
    fresh = ClassAwareSampler(LT_LABELS, 5, seed=42)
    fresh.load_state_dict(state)
    assert [fresh.draw() for _ in range(100)] == expected


def test_sampler_registry():
    from presets.schema import SAMPLERS as NAMES

    assert SAMPLERS.names() == sorted(NAMES)
    assert SAMPLERS.get("class_aware") is ClassAwareSampler
    with pytest.raises(ValueError, match="empty classes"):
        ClassAwareSampler([0, 0, 2], 3)


# ---------------------------------------------------------------- evaluation batches and subsets


def test_eval_batches_cover_everything_in_order():
    images = torch.randint(0, 17, (23, 1, 8, 8), dtype=torch.uint8)
    labels = list(range(23))
    batches = list(eval_batches(images, labels, 10, "cpu", 16.0))
    assert [len(y) for _, y in batches] == [10, 10, 3]
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and torch.equal(x, images.float() / 16)
    assert torch.cat([b[1] for b in batches]).tolist() == labels


def test_balanced_subset():
    labels = torch.arange(100) % 4  # 25 per class
    idx = balanced_subset(labels, 30, 4, seed=0)
    assert torch.bincount(labels[idx], minlength=4).tolist() == [8, 8, 7, 7]
    assert idx.dtype == torch.long and idx.tolist() == sorted(set(idx.tolist()))
    assert torch.equal(idx, balanced_subset(labels, 30, 4, seed=0))
    assert not torch.equal(idx, balanced_subset(labels, 30, 4, seed=1))
    assert torch.equal(balanced_subset(labels, 500, 4, seed=0), torch.arange(100))


def test_balanced_subset_redistributes_a_short_class():
    labels = torch.tensor([0] * 10 + [1] * 2 + [2] * 10)
    idx = balanced_subset(labels, 15, 3, seed=0)
    assert torch.bincount(labels[idx], minlength=3).tolist() == [7, 2, 6]
