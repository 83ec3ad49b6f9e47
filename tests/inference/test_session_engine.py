"""Session behaviour with a fake network of known output (see conftest.py): crop geometry, paste-back,
extension, objects, undo/redo, journal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seganypet.errors import InputError, PromptError, SessionStateError
from seganypet.image import PETImage
from seganypet.inference import Session


def make_affine(spacing, flips=(1, 1, 1), perm=(0, 1, 2), origin=(-100.0, 50.0, 20.0)) -> np.ndarray:
    a = np.zeros((4, 4))
    a[3, 3] = 1
    for col, (row, sp, f) in enumerate(zip(perm, spacing, flips)):
        a[row, col] = sp * f
    a[:3, 3] = origin
    return a


def world_of_all(shape, aff) -> np.ndarray:
    g = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    return g @ aff[:3, :3].T + aff[:3, 3]


def check_sphere(session: Session, mask: np.ndarray, click, radius_mm: float) -> None:
    """The mask is the ball of ``radius_mm`` around the centre of the model voxel of the click:
    every voxel farther than 1.6 mm from the sphere surface is classified right, centroid within 0.4 mm."""
    grid = session.engine.grid
    m = np.floor(grid.input_to_model(np.asarray(click, float)) + 0.5 + 1e-6)
    centre = m @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    aff = session.image.affine
    d = np.linalg.norm(world_of_all(mask.shape, aff) - centre, axis=-1)
    sure_in, sure_out = d < radius_mm - 1.6, d > radius_mm + 1.6
    assert mask[sure_in].all(), f"{(~mask[sure_in]).sum()} voxels missing inside the sphere"
    assert not mask[sure_out].any(), f"{mask[sure_out].sum()} voxels outside the sphere"


def sphere_image(shape, aff, click, radius_mm=20.0) -> PETImage:
    d = np.linalg.norm(
        world_of_all(shape, aff) - (np.asarray(click, float) @ aff[:3, :3].T + aff[:3, 3]), axis=-1
    )
    arr = np.where(d <= radius_mm, 8.0, 1.0).astype(np.float32)
    return PETImage(arr, aff, units="SUVbw")


@pytest.mark.parametrize(
    "spacing,flips,perm",
    [
        ((4.0, 4.0, 3.0), (1, 1, 1), (0, 1, 2)),  # anisotropic RAS
        ((2.0, 2.0, 3.0), (-1, -1, 1), (0, 1, 2)),  # LPS-like (DICOM)
        ((3.0, 2.0, 2.5), (1, -1, -1), (2, 0, 1)),  # permuted + flipped axes
        ((1.5, 1.5, 1.5), (-1, 1, 1), (0, 1, 2)),
    ],
)
def test_first_click_gives_sphere_at_click(make_fake, spacing, flips, perm):
    fake = make_fake("sphere", radius=10.0)
    aff = make_affine(spacing, flips, perm)
    shape = (50, 44, 40)
    click = (25, 20, 22)
    s = Session(fake, extend=False)
    s.set_image(sphere_image(shape, aff, click))
    mask = s.add_point(click)
    assert mask.dtype == bool and mask.shape == shape
    check_sphere(s, mask, click, 15.0)  # 10 voxels at 1.5 mm
    # exact: every input voxel takes the model voxel nearest to its centre (computed here from the
    # affines alone); that voxel is in the ball iff within 10 voxels of the click's model voxel
    grid = s.engine.grid
    m = np.floor(grid.input_to_model(np.asarray(click, float)) + 0.5 + 1e-6)
    to_model = np.linalg.inv(grid.affine)
    mw = world_of_all(shape, aff) @ to_model[:3, :3].T + to_model[:3, 3]
    nearest = np.floor(mw + 0.5 + 1e-6)
    dist = np.linalg.norm(nearest - m, axis=-1)
    expected = dist <= 10.0
    unsure = np.abs(dist - 10.0) < 0.5  # the trilinearly upsampled cone is |x| only to ~0.4 voxel
    assert expected.sum() > 100
    np.testing.assert_array_equal(mask[~unsure], expected[~unsure])
    # the crop is centred on the click: it sits at crop index 64
    w = s.windows()[0]
    np.testing.assert_array_equal(np.asarray(w["points"][0]), [64, 64, 64])


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize(
    "spacing,flips,perm",
    [
        ((4.0, 4.0, 3.0), (1, 1, 1), (0, 1, 2)),
        ((3.0, 2.0, 2.5), (1, -1, -1), (2, 0, 1)),
        ((1.5, 1.5, 1.5), (-1, -1, 1), (1, 0, 2)),
    ],
)
def test_paste_back_is_exact(make_fake, spacing, flips, perm, axis):
    """A prediction that is exactly 'crop index along one model axis <= the click's' lands on exactly
    the input voxels whose nearest model voxel satisfies it (no off-by-one, no half-voxel shift)."""
    aff = make_affine(spacing, flips, perm)
    shape = (40, 36, 30)
    click = (21, 17, 12)
    s = Session(make_fake("halfspace", axis=axis), extend=False)
    s.set_image(sphere_image(shape, aff, click))
    mask = s.add_point(click)
    grid = s.engine.grid
    to_model = np.linalg.inv(grid.affine)
    nearest = np.floor(world_of_all(shape, aff) @ to_model[:3, :3].T + to_model[:3, 3] + 0.5 + 1e-6)
    m = np.floor(grid.input_to_model(np.asarray(click, float)) + 0.5 + 1e-6)
    origin = m - 64
    in_crop = np.all((nearest >= origin) & (nearest < origin + 128), axis=-1)
    expected = in_crop & (nearest[..., axis] <= m[axis])
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("policy", ["pad", "shift"])
def test_click_three_voxels_from_edge(make_fake, policy):
    fake = make_fake("sphere", radius=10.0)
    aff = make_affine((4.0, 4.0, 3.0))
    shape = (60, 60, 90)
    click = (3, 30, 86)  # 3 voxels from the i=0 face and from the k=89 face
    s = Session(fake, extend=False, crop_policy=policy)
    s.set_image(sphere_image(shape, aff, click))
    mask = s.add_point(click)
    check_sphere(s, mask, click, 15.0)
    assert mask[0].any() and mask[:, :, -1].any()  # the ball is cut by the image border, not shifted
    w = s.windows()[0]
    grid = s.engine.grid
    m = np.floor(grid.input_to_model(np.asarray(click, float)) + 0.5 + 1e-6).astype(int)
    if policy == "pad":
        assert w["origin"] == list(m - 64)
        assert w["origin"][0] < 0  # padded
    else:
        assert w["origin"][0] == 0 and w["origin"][2] == grid.shape[2] - 128
        np.testing.assert_array_equal(np.asarray(w["points"][0]), m - np.asarray(w["origin"]))


def test_crop_padding_is_zero_and_normalisation_applied(make_fake):
    fake = make_fake("sphere")
    s = Session(fake, extend=False)
    aff = make_affine((4.0, 4.0, 3.0))
    s.set_image(PETImage(np.full((40, 40, 40), 3.0, np.float32), aff))
    grid = s.engine.grid
    crop = s.engine.crop((-10, 0, 0))
    inside = np.zeros(crop.shape, bool)
    inside[10 : 10 + grid.shape[0], : grid.shape[1], : grid.shape[2]] = True
    assert np.allclose(crop[inside], 3.0) and (crop[~inside] == 0).all()
    # z-score over voxels > 0 leaves the padding at -mean/std (published recipe), suv_clip at 0
    from seganypet.inference.engine import normalize

    z = normalize(np.concatenate([np.zeros(10), np.arange(1.0, 11.0)]).astype(np.float32), "zscore_nonzero")
    vals = np.arange(1.0, 11.0)
    assert np.isclose(float(z[0]), -vals.mean() / vals.std(ddof=1), atol=1e-5)
    assert np.array_equal(normalize(np.array([1.0, -2.0], np.float32), "none").numpy(), [1.0, -2.0])


def test_further_click_reuses_crop_and_embedding(make_fake):
    fake = make_fake("sphere", radius=10.0, neg_radius=5.0)
    aff = make_affine((2.0, 2.0, 2.0))
    shape = (60, 60, 60)
    s = Session(fake, extend=False)
    s.set_image(sphere_image(shape, aff, (30, 30, 30)))
    m1 = s.add_point((30, 30, 30))
    assert fake.calls["encode"] == 1
    assert not fake.last_mask_input.any()  # zeros on the first click
    logits1 = s.low_res_logits()
    m2 = s.add_point((36, 30, 30), positive=False)  # negative click near the edge of the ball
    assert fake.calls["encode"] == 1  # cached embedding
    np.testing.assert_array_equal(fake.last_mask_input, logits1)  # previous logits as mask prompt
    assert len(s.windows()) == 1 and s.windows()[0]["labels"] == [1, 0]
    assert m2.sum() < m1.sum() and not m2[36, 30, 30] and m1[36, 30, 30]
    assert (m2 <= m1).all()


def test_undo_redo_reset(make_fake):
    fake = make_fake("sphere", radius=8.0)
    s = Session(fake, extend=False)
    aff = make_affine((2.0, 2.0, 2.0))
    s.set_image(sphere_image((50, 50, 50), aff, (25, 25, 25)))
    a = s.add_point((25, 25, 25))
    b = s.add_point((30, 25, 25), positive=False)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(s.undo(), a)
    np.testing.assert_array_equal(s.redo(), b)
    with pytest.raises(SessionStateError):
        s.redo()
    assert not s.reset().any()
    np.testing.assert_array_equal(s.undo(), b)
    s.undo()
    s.undo()
    s.undo()  # the implicit new_object
    assert s.active_label is None and s.objects == []
    with pytest.raises(SessionStateError):
        s.undo()


def test_two_objects_never_overlap(make_fake):
    aff = make_affine((2.0, 2.0, 2.0))
    img = sphere_image((60, 50, 50), aff, (25, 25, 25))
    labels = {}
    for overlap in ("keep", "replace"):
        s = Session(make_fake("sphere", radius=8.0), extend=False, overlap=overlap)
        s.set_image(img)
        a = s.add_point((25, 25, 25))
        s.new_object("second")
        b = s.add_point((31, 25, 25))  # balls of 12 mm radius 12 mm apart: they overlap
        lm = s.label_map
        assert lm.dtype == np.uint16 and set(np.unique(lm)) == {0, 1, 2}
        m1, m2 = s.mask(1), s.mask("second")
        assert not (m1 & m2).any()
        np.testing.assert_array_equal(lm == 1, m1)
        np.testing.assert_array_equal(lm == 2, m2)
        np.testing.assert_array_equal(b, m2)
        if overlap == "keep":
            np.testing.assert_array_equal(m1, a)  # the first object keeps its voxels
        else:
            assert m1.sum() < a.sum()  # the new object took the shared voxels
        assert s.names == {1: "object 1", 2: "second"}
        assert [o["voxels"] for o in s.objects] == [int(m1.sum()), int(m2.sum())]
        labels[overlap] = lm
    assert (labels["keep"] > 0).sum() == (labels["replace"] > 0).sum()


def test_object_management(make_fake):
    s = Session(make_fake("sphere", radius=6.0), extend=False)
    s.set_image(sphere_image((40, 40, 40), make_affine((2.0, 2.0, 2.0)), (20, 20, 20)))
    with pytest.raises(SessionStateError):
        s.reset()
    s.add_point((20, 20, 20))
    lab = s.new_object("lesion")
    assert s.active_label == lab == 2
    with pytest.raises(InputError):
        s.new_object("lesion")
    s.select_object(1)
    s.rename_object(1, "liver")
    assert s.names[1] == "liver"
    assert s.select_object("lesion") == 2
    s.delete_object("liver")
    assert s.names == {2: "lesion"} and s.active_label == 2
    with pytest.raises(InputError):
        s.select_object(7)


def test_bad_points_are_prompt_errors(make_fake):
    s = Session(make_fake())
    with pytest.raises(SessionStateError):
        s.add_point((1, 2, 3))
    s.set_image(sphere_image((30, 30, 20), make_affine((2.0, 2.0, 2.0)), (10, 10, 10)))
    for bad in [(30, 5, 5), (-1, 5, 5), (5, 5, 19.6), (1, 2), (1, 2, float("nan")), "abc", None]:
        with pytest.raises(PromptError):
            s.add_point(bad)
    with pytest.raises(PromptError, match="first click"):
        s.add_point((5, 5, 5), positive=False)


def test_boxes(make_fake):
    aff = make_affine((2.0, 2.0, 2.0))
    img = sphere_image((60, 60, 60), aff, (30, 30, 30))
    s = Session(make_fake("sphere", boxes=False), extend=False)
    s.set_image(img)
    with pytest.raises(PromptError, match="not trained with boxes"):
        s.add_box((20, 20, 20), (30, 30, 30))
    s = Session(make_fake("sphere", boxes=True), extend=False)
    s.set_image(img)
    mask = s.add_box((20, 22, 24), (30, 34, 36))
    # the box on the input grid (the fake's box field is exact only away from edges and corners)
    assert mask[21:30, 23:34, 25:36].mean() > 0.95 and mask[22:29, 24:33, 26:35].all()
    assert not mask[:19].any() and not mask[32:].any() and not mask[:, :, 38:].any()
    # a second box that sticks out of the first crop gets its own crop, centred on it
    s3 = Session(make_fake("sphere", boxes=True), extend=False)
    s3.set_image(PETImage(np.ones((150, 40, 40), np.float32), aff))
    s3.add_box((20, 10, 10), (30, 20, 20))
    s3.add_box((60, 10, 10), (100, 20, 20))  # i = 120..200 mm: beyond the first crop's 192 mm
    assert len(s3.windows()) == 2 and s3.mask()[25, 15, 15] and s3.mask()[80, 15, 15]
    s2 = Session(make_fake("sphere", boxes=True), extend=False)
    s2.set_image(PETImage(np.ones((150, 20, 20), np.float32), make_affine((2.0, 2.0, 2.0))))
    with pytest.raises(PromptError, match="does not fit"):
        s2.add_box((0, 0, 0), (149, 19, 19))


def test_set_mask_then_refine(make_fake):
    fake = make_fake("sphere", radius=6.0)
    s = Session(fake, extend=False)
    aff = make_affine((2.0, 2.0, 2.0))
    s.set_image(sphere_image((50, 50, 50), aff, (25, 25, 25)))
    given = np.zeros((50, 50, 50), bool)
    given[20:30, 20:30, 20:30] = True
    np.testing.assert_array_equal(s.set_mask(given), given)
    s.add_point((25, 25, 25))
    assert fake.last_mask_input.max() > 0  # the given mask went in as the mask prompt
    with pytest.raises(InputError):
        s.set_mask(np.zeros((5, 5, 5), bool))
    # a negative click on a given mask away from any crop opens a crop there and carves it
    s2 = Session(make_fake("sphere", radius=6.0, neg_radius=3.0), extend=False)
    s2.set_image(sphere_image((50, 50, 50), aff, (25, 25, 25)))
    s2.set_mask(given)
    carved = s2.add_point((25, 25, 25), positive=False)
    assert not carved[25, 25, 25] and carved.sum() < given.sum() and (carved <= given).all()
    # ... but a negative click outside it changes nothing
    np.testing.assert_array_equal(s2.add_point((5, 5, 5), positive=False), carved)


def test_journal_replay_reproduces_state(make_fake):
    aff = make_affine((4.0, 4.0, 3.0), flips=(-1, -1, 1))
    img = sphere_image((60, 60, 80), aff, (30, 30, 40))
    s = Session(make_fake("sphere", radius=9.0), extend=True)
    s.set_image(img)
    s.add_point((30, 30, 40))
    s.add_point((33, 30, 40), positive=False)
    s.undo()
    s.add_point((31, 31, 41))
    s.new_object("b")
    s.add_point((10, 10, 10))
    given = np.zeros(img.shape, bool)
    given[50:55, 50:55, 70:75] = True
    s.new_object("c")
    s.set_mask(given)
    s.undo()
    s.redo()
    s.rename_object(2, "bee")
    events = json.loads(json.dumps(s.journal()))
    r = Session.restore(img, events, model=make_fake("sphere", radius=9.0), extend=True)
    np.testing.assert_array_equal(r.label_map, s.label_map)
    assert r.names == s.names and r.active_label == s.active_label
    assert r.objects == s.objects
    np.testing.assert_array_equal(r.undo(), s.undo())  # the undo history came back too


def test_auto_extension_covers_object_larger_than_crop(make_fake):
    """A 120 x 60 x 360 mm block (crop = 192 mm) is found whole from one click, with bounded windows."""
    fake = make_fake("intensity")
    aff = make_affine((4.0, 4.0, 3.0))
    shape = (60, 50, 160)
    arr = np.zeros(shape, np.float32)
    arr[15:45, 18:33, 20:140] = 1.0  # 120 x 60 x 360 mm
    truth = arr > 0
    s = Session(fake, max_windows=8)
    s.set_image(PETImage(arr, aff))
    mask = s.add_point((30, 25, 40))
    kinds = [w["kind"] for w in s.windows()]
    assert kinds[0] == "click" and "extension" in kinds and len(kinds) <= 8
    inter = (mask & truth).sum()
    dice = 2 * inter / (mask.sum() + truth.sum())
    assert dice > 0.99, dice
    # without extension only one crop's worth is found
    s2 = Session(make_fake("intensity"), extend=False)
    s2.set_image(PETImage(arr, aff))
    part = s2.add_point((30, 25, 40))
    assert part.sum() < 0.7 * truth.sum()
    # bounded: a single window allowed -> no extension
    s3 = Session(make_fake("intensity"), max_windows=1)
    s3.set_image(PETImage(arr, aff))
    np.testing.assert_array_equal(s3.add_point((30, 25, 40)), part)
    # a further click inside the main crop re-derives the extensions without new encoder runs
    n_enc = fake.calls["encode"]
    mask2 = s.add_point((30, 25, 41))
    assert fake.calls["encode"] == n_enc
    np.testing.assert_array_equal(mask2, mask)


def test_device_validation(make_fake):
    import torch

    with pytest.raises(InputError, match="not valid"):
        Session(make_fake(), device="gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            Session(make_fake(), device="cuda:0")


def test_other_objects_as_negative_evidence(make_fake):
    aff = make_affine((2.0, 2.0, 2.0))
    img = sphere_image((60, 50, 50), aff, (25, 25, 25))
    s = Session(make_fake("sphere", radius=8.0, neg_radius=4.0), extend=False, others_negative=True)
    s.set_image(img)
    first = s.add_point((25, 25, 25))
    s.new_object()
    second = s.add_point((31, 25, 25))
    assert s.model.last_labels == [1, 0]  # the first object went in as a negative point
    assert not (first & second).any()
    assert s.windows()[0]["labels"] == [1]  # derived negatives are not stored as user prompts


def test_click_in_extension_window_makes_it_a_click_window(make_fake):
    fake = make_fake("intensity")
    aff = make_affine((4.0, 4.0, 3.0))
    arr = np.zeros((60, 50, 160), np.float32)
    arr[15:45, 18:33, 20:140] = 1.0
    s = Session(fake, max_windows=8)
    s.set_image(PETImage(arr, aff))
    s.add_point((30, 25, 40))
    before = s.windows()
    far = max(before, key=lambda w: w["origin"][2])
    assert far["kind"] == "extension"
    grid = s.engine.grid
    centre_in = np.round(grid.model_to_input(np.asarray(far["origin"]) + 64)).astype(int)
    centre_in = np.clip(centre_in, 0, np.asarray(arr.shape) - 1)
    centre_in[:2] = (30, 25)
    s.add_point(tuple(int(v) for v in centre_in))
    after = s.windows()
    hit = [w for w in after if w["origin"] == far["origin"]]
    assert hit and hit[0]["kind"] == "click" and len(hit[0]["points"]) == 2


def test_real_tiny_network_points_and_boxes():
    """The Session drives the real Sam3D (tiny preset, random weights): points, boxes, undo."""
    import torch

    import seganypet
    from seganypet.build import build_model

    torch.manual_seed(0)
    model = build_model("tiny", supports_boxes=True)
    s = seganypet.Session(model, "cpu", max_windows=2)
    aff = make_affine((4.0, 4.0, 3.0), flips=(-1, -1, 1))
    s.set_image(sphere_image((40, 40, 60), aff, (20, 20, 30)))
    m1 = s.add_point((20, 20, 30))
    assert m1.shape == (40, 40, 60) and m1.dtype == bool
    assert s.low_res_logits().shape == (32, 32, 32)
    s.new_object("boxed")
    m2 = s.add_box((15, 15, 25), (25, 25, 35))
    assert m2.shape == (40, 40, 60) and s.windows()[0]["box"] is not None
    assert not (s.mask(1) & s.mask(2)).any()
    np.testing.assert_array_equal(s.undo(), np.zeros_like(m2))
    no_box = Session(build_model("tiny"), "cpu")
    no_box.set_image(sphere_image((40, 40, 60), aff, (20, 20, 30)))
    with pytest.raises(PromptError, match="not trained with boxes"):
        no_box.add_box((15, 15, 25), (25, 25, 35))
