"""The embedded world: deterministic scenes, renderer, true captions and domain shifts."""

import pytest
import torch

from peftclip.errors import PeftClipError
from peftclip.world import (
    COLOR_NAMES,
    SHAPES,
    SHIFTS,
    Scenes,
    apply_shift,
    caption_attributes,
    caption_matches,
    caption_text,
    is_held_out,
    render,
    sample_scenes,
    scene_attributes,
    vocabulary,
)


def _scenes(n=64, seed=0, held_out="exclude"):
    return sample_scenes(n, torch.Generator().manual_seed(seed), held_out)


def _single(shape: int, color: int = 0, size: int = 1, cell: int = 4, background: int = 0):
    one = torch.tensor
    return Scenes(
        shape=one([shape]), color=one([color]), size=one([size]), count=one([1]),
        cells=one([[cell, -1, -1]]), background=one([background]),
    )  # fmt: skip


def test_held_out_rule_leaves_twenty_pairs_and_every_attribute_seen():
    pairs = torch.cartesian_prod(torch.arange(len(SHAPES)), torch.arange(len(COLOR_NAMES)))
    held = is_held_out(pairs[:, 0], pairs[:, 1])
    assert held.sum() == 20
    seen = pairs[~held]
    assert set(seen[:, 0].tolist()) == set(range(10)) and set(seen[:, 1].tolist()) == set(range(8))


@pytest.mark.parametrize("mode", ["exclude", "only"])
def test_sampling_respects_the_held_out_rule(mode):
    scenes = _scenes(2000, held_out=mode)
    assert is_held_out(scenes.shape, scenes.color).all() == (mode == "only")
    assert (~is_held_out(scenes.shape, scenes.color)).all() == (mode == "exclude")


def test_scenes_have_distinct_cells_and_the_right_counts():
    scenes = _scenes(500)
    for cells, count in zip(scenes.cells.tolist(), scenes.count.tolist(), strict=True):
        used = [c for c in cells if c >= 0]
        assert len(used) == count and len(set(used)) == count


def test_world_is_deterministic_by_seed():
    first = render(_scenes(seed=1), 48, torch.Generator().manual_seed(2))[0]
    again = render(_scenes(seed=1), 48, torch.Generator().manual_seed(2))[0]
    other = render(_scenes(seed=3), 48, torch.Generator().manual_seed(2))[0]
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_every_shape_draws_a_distinct_filled_silhouette():
    masks = torch.stack([render(_single(shape), 48)[1][0] for shape in range(len(SHAPES))])
    areas = masks.sum(dim=(1, 2))
    assert (areas > 40).all()
    overlap = (masks[:, None] ^ masks[None]).sum(dim=(2, 3))
    assert (overlap + torch.eye(len(SHAPES), dtype=torch.long) * 1000 > 15).all()


def test_objects_have_their_colour_and_count_and_size_scale_the_area():
    scenes = _scenes(200)
    images, mask = render(scenes, 48)
    palette = torch.tensor([list(rgb) for rgb in __import__("peftclip").world.COLORS.values()])
    mean_color = (images.float() * mask[..., None]).sum(dim=(1, 2)) / mask.sum(dim=(1, 2))[:, None]
    nearest = (mean_color[:, None] - palette[None]).norm(dim=-1).argmin(dim=1)
    assert torch.equal(nearest, scenes.color)
    small, large = render(_single(0, size=0), 48)[1].sum(), render(_single(0, size=1), 48)[1].sum()
    assert large > 2 * small


def test_captions_are_true_of_their_image_and_say_the_shape():
    generator = torch.Generator().manual_seed(0)
    scenes = _scenes(300)
    captions = caption_attributes(scenes, generator)
    texts = caption_text(captions, generator)
    matches = caption_matches(captions, scene_attributes(scenes))
    assert matches.diagonal().all()
    for text, shape, color, row in zip(
        texts, scenes.shape, scenes.color, captions.tolist(), strict=True
    ):
        assert SHAPES[shape] in text
        assert (COLOR_NAMES[color] in text) == (row[1] >= 0)
        assert set(text.split()) <= set(vocabulary())


def test_caption_matches_is_exact_on_mentioned_attributes():
    scenes = scene_attributes(Scenes(
        shape=torch.tensor([0, 0, 1]), color=torch.tensor([2, 3, 2]), size=torch.tensor([0, 0, 0]),
        count=torch.tensor([1, 1, 1]), cells=torch.tensor([[4, -1, -1]] * 3),
        background=torch.tensor([0, 1, 0]),
    ))  # fmt: skip
    circle_any_color = torch.tensor([[0, -1, -1, 1, -1, -1]])
    red_circle = torch.tensor([[0, 2, -1, 1, -1, -1]])
    assert caption_matches(circle_any_color, scenes).tolist() == [[True, True, False]]
    assert caption_matches(red_circle, scenes).tolist() == [[True, False, False]]


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_shift_severity_is_a_monotone_knob(name):
    images, mask = render(_scenes(32), 48)
    distances = [
        (apply_shift(name, images, mask, s).float() - images.float()).abs().mean().item()
        for s in (0.0, 0.3, 0.6, 1.0)
    ]
    assert distances[0] < 0.5  # severity 0 is (up to rounding) no change
    assert distances == sorted(distances) and distances[-1] > 5


def test_bad_shift_arguments_fail_clearly():
    images, mask = render(_scenes(2), 48)
    with pytest.raises(PeftClipError, match="unknown world shift 'blurr'"):
        apply_shift("blurr", images, mask)
    with pytest.raises(PeftClipError, match="severity"):
        apply_shift("blur", images, mask, 1.5)
