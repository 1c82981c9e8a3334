"""vidcore.controls.canny against what Canny's steps must give on synthetic images."""

import numpy as np
import PIL.Image
import pytest
import torch

from vidcore.controls import canny, canny_edges, gaussian_kernel


def ring(h, w, top, left, bottom, right) -> np.ndarray:
    """Boolean h x w image of the one-pixel boundary of rows top..bottom, columns left..right (inclusive)."""
    out = np.zeros((h, w), dtype=bool)
    out[top, left:right + 1] = out[bottom, left:right + 1] = True
    out[top:bottom + 1, left] = out[top:bottom + 1, right] = True
    return out


def gray(h, w, fills) -> torch.Tensor:
    img = torch.zeros(1, 1, h, w)
    for (top, left, bottom, right), value in fills:
        img[..., top:bottom + 1, left:right + 1] = value
    return img


@pytest.mark.parametrize("box,sigma", [((5, 6, 12, 16), 1.0), ((3, 4, 17, 9), 1.0), ((8, 8, 11, 11), 0.0)])
def test_filled_square_gives_its_one_pixel_outline(box, sigma):
    img = gray(22, 24, [(box, 255.0)])
    edges = canny_edges(img, sigma=sigma)[0, 0].numpy()
    # a closed 1-pixel line on the square's own boundary pixels (the brighter side of each step)
    np.testing.assert_array_equal(edges, ring(22, 24, *box))


def test_image_borders_are_not_edges():
    img = gray(22, 24, [((0, 0, 10, 23), 255.0)])  # the top half is bright: one step, between rows 10 and 11
    edges = canny_edges(img)[0, 0].numpy()
    assert edges[10].all() and edges.sum() == 24


@pytest.mark.parametrize("box,size", [((5, 6, 12, 16), (22, 24)), ((8, 8, 27, 31), (36, 40))])
def test_wide_blur_cuts_the_corners(box, size):
    """A blur as wide as sigma=2 rounds the corners: each corner pixel moves one step diagonally inwards, the
    outline stays closed (8-connected) and one pixel wide."""
    img = gray(*size, [(box, 255.0)])
    edges = canny_edges(img, sigma=2.0)[0, 0].numpy()
    top, left, bottom, right = box
    expected = ring(*size, *box)
    for (y, x), (dy, dx) in zip([(top, left), (top, right), (bottom, left), (bottom, right)],
                                [(1, 1), (1, -1), (-1, 1), (-1, -1)]):
        expected[y, x], expected[y + dy, x + dx] = False, True
    np.testing.assert_array_equal(edges, expected)


def test_thresholds_on_an_exact_gradient():
    """Without blur, a vertical step of height v gives a Sobel magnitude of exactly 4 v beside the step."""
    img = gray(10, 12, [((0, 6, 9, 11), 50.0)])  # right half at 50: magnitude 200 at columns 5 and 6
    at = lambda low, high: canny_edges(img, low, high, sigma=0.0)[0, 0].numpy()  # noqa: E731
    edges = at(199, 199)
    assert edges[:, 6].all() and edges.sum() == 10  # one column, on the bright side
    assert not at(201, 201).any()
    assert not at(100, 250).any()  # weak everywhere and nothing strong: nothing
    assert not canny_edges(torch.full((1, 1, 10, 12), 77.0))[0, 0].any()  # flat image


def test_hysteresis_keeps_weak_edges_connected_to_strong_ones():
    # rows 0..9 brighten from 30 (left) to 255 (right): the step under row 9 has a magnitude of about 4x the
    # brightness, 120 .. 1020 along one unbroken line; an isolated dim square (60 -> magnitude 240) below
    img = torch.zeros(1, 1, 24, 30)
    ramp = 30 + 225 * torch.arange(30) / 29
    img[..., :10, :] = ramp
    img[..., 15:21, 5:11] = 60.0
    both = canny_edges(img, low=100, high=500, sigma=0.0)[0, 0].numpy()
    assert both[9].all()  # weak along most of the line, but connected to its strong part
    assert both.sum() == 30  # nothing else: the isolated square is weak and alone
    strong = 4 * ramp.numpy() >= 500
    strong_only = canny_edges(img, low=500, high=500, sigma=0.0)[0, 0].numpy()
    np.testing.assert_array_equal(strong_only[9], strong)
    assert 0 < strong.sum() < 30 and strong_only.sum() == strong.sum()
    # a low enough strong threshold finds the square's outline too
    assert canny_edges(img, low=200, high=200, sigma=0.0)[0, 0].numpy()[ring(24, 30, 15, 5, 20, 10)].all()


def test_output_formats_match_controlnet_inputs():
    rng = np.random.default_rng(0)
    base = np.zeros((2, 16, 20, 3), dtype=np.uint8)
    base[0, 4:12, 5:15] = 200
    base[1, 2:9, 3:11] = rng.integers(150, 256, size=3, dtype=np.uint8)
    arr = canny(base)
    assert arr.shape == (2, 16, 20, 3) and arr.dtype == np.uint8
    assert set(np.unique(arr)) <= {0, 255} and (arr[..., 0] == arr[..., 2]).all() and arr.any()
    # float arrays in [0, 1] and tensors give the same edges
    assert np.array_equal(canny(base.astype(np.float32) / 255), arr)
    t = canny(torch.from_numpy(base).permute(0, 3, 1, 2) / 255)
    assert t.shape == (2, 3, 16, 20) and t.dtype == torch.float32
    assert np.array_equal(t.permute(0, 2, 3, 1).numpy() * 255, arr)
    assert torch.equal(canny(torch.from_numpy(base[0]).permute(2, 0, 1) / 255), t[0])
    pil = canny([PIL.Image.fromarray(f) for f in base])
    assert [p.mode for p in pil] == ["RGB", "RGB"] and pil[0].size == (20, 16)
    assert np.array_equal(np.asarray(pil[1]), arr[1])
    single = canny(PIL.Image.fromarray(base[0]).convert("L"))
    assert single.mode == "RGB" and np.array_equal(np.asarray(single), arr[0])


def test_errors():
    with pytest.raises(ValueError, match="low <= high"):
        canny_edges(torch.zeros(1, 1, 4, 4), 200, 100)
    with pytest.raises(TypeError, match="canny takes"):
        canny("frame.png")
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        canny(torch.zeros(2, 2, 8, 8))


def test_gaussian_kernel():
    k = gaussian_kernel(1.0)
    assert k.numel() == 7 and abs(k.sum().item() - 1) < 1e-6 and torch.equal(k, k.flip(0))
