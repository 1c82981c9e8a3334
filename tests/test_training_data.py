"""vidcore.training.data: clip folders (mp4, gif, webm, frame folders), captions, frame sampling, crops, the epoch
order, and one clear error for each kind of bad data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tiny_training as tt
import torch

from vidcore.errors import VidcoreError
from vidcore.training.data import DatasetError, EpochOrder, VideoFolder, read_frames, resize_and_crop

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return tt.write_clips(tmp_path_factory.mktemp("clips"), kinds=("mp4", "gif", "frames", "webm"), frames=7)


def test_reads_every_kind_with_its_caption(clips):
    ds = VideoFolder(clips, num_frames=3, height=16, width=16, sample_stride=2)
    assert [c.path.name for c in ds.clips] == ["clip0.mp4", "clip1.gif", "clip2", "clip3.webm"]
    assert [c.num_frames for c in ds.clips] == [7, 7, 7, 7]
    assert ds.clips[0].caption == "a red ball"  # metadata.jsonl
    assert ds.clips[2].caption == "clip number 2 moving left"  # side-car .txt of a frame folder
    for i in range(len(ds)):
        x, caption = ds.item(i, torch.Generator().manual_seed(i))
        assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32
        assert -1.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05
        assert caption == ds.clips[i].caption


def test_frames_are_the_sampled_ones_in_pixel_range(clips):
    ds = VideoFolder(clips, num_frames=3, height=18, width=24, sample_stride=2)
    g = torch.Generator().manual_seed(5)
    indices = ds.frame_indices(2, g)
    assert indices[1] - indices[0] == 2 and indices[0] in range(7 - 5 + 1)
    x, _ = ds.item(2, torch.Generator().manual_seed(5))  # the frame folder is 18x24: no resize, no crop
    expected = tt.random_frames(7, 18, 24, 2)[indices]
    assert torch.allclose(x, torch.from_numpy(expected).permute(3, 0, 1, 2).float() / 127.5 - 1, atol=1e-6)
    # the same generator seed gives the same item; another seed another start
    a, _ = ds.item(0, torch.Generator().manual_seed(1))
    b, _ = ds.item(0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    starts = {ds.frame_indices(0, torch.Generator().manual_seed(s))[0] for s in range(20)}
    assert len(starts) > 1


def test_resize_covers_and_crops():
    frames = torch.arange(2 * 3 * 10 * 20, dtype=torch.float32).view(2, 3, 10, 20)
    out = resize_and_crop(frames, 10, 10)  # already covers: centre crop of the width
    assert torch.equal(out, frames[..., 5:15])
    out = resize_and_crop(frames, 20, 20)  # upscaled x2 to 20x40, then cropped
    assert out.shape == (2, 3, 20, 20)
    crops = {resize_and_crop(frames, 10, 10, "random", torch.Generator().manual_seed(s))[0, 0, 0, 0].item()
             for s in range(10)}
    assert len(crops) > 1


def test_read_frames_stops_at_the_last_index(clips):
    frames = read_frames(clips / "clip0.mp4", [0, 2])
    assert frames.shape == (2, 24, 32, 3) and frames.dtype == np.uint8


def test_epoch_order_state_round_trip():
    a = EpochOrder(5, seed=3)
    first = a.take(4) + a.take(4)  # crosses the epoch end
    assert sorted(first[:5]) == [0, 1, 2, 3, 4] and a.epoch == 1
    b = EpochOrder(5, seed=3)
    b.load_state_dict(a.state_dict())
    assert a.take(7) == b.take(7)
    with pytest.raises(DatasetError, match="trained on 5 clips, the data folder now has 6"):
        EpochOrder(6, seed=3).load_state_dict(a.state_dict())


# ----------------------------------------------------------------------------------------- errors


def test_error_empty_folder(tmp_path):
    (tmp_path / "notes.md").write_text("nothing")
    with pytest.raises(DatasetError, match=r"no clips in .*: expected video files \(.mp4"):
        VideoFolder(tmp_path, 4, 16, 16)
    with pytest.raises(DatasetError, match="does not exist"):
        VideoFolder(tmp_path / "missing", 4, 16, 16)


def test_error_unreadable_clip_names_it(tmp_path):
    tt.write_clips(tmp_path, kinds=("mp4",))
    (tmp_path / "broken.mp4").write_bytes(b"\x00not a video" * 10)
    (tmp_path / "broken.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"cannot read clip .*broken\.mp4") as info:
        VideoFolder(tmp_path, 4, 16, 16)
    assert isinstance(info.value, VidcoreError) and "\n" not in str(info.value)


def test_error_short_clip_gives_both_numbers(tmp_path):
    tt.write_clips(tmp_path, kinds=("gif",), frames=5)
    with pytest.raises(DatasetError, match=r"clip .*clip0\.gif has 5 frames; num_frames=4 at sample_stride=2 "
                                           r"needs at least 7"):
        VideoFolder(tmp_path, 4, 16, 16, sample_stride=2)


def test_error_missing_caption_says_where_to_add_it(tmp_path):
    tt.write_clips(tmp_path, kinds=("mp4", "frames"))
    (tmp_path / "clip1.txt").unlink()
    with pytest.raises(DatasetError, match=r"clip .*clip1 has no caption: add \{\"file_name\": \"clip1\""):
        VideoFolder(tmp_path, 4, 16, 16)


def test_error_bad_metadata_line(tmp_path):
    tt.write_clips(tmp_path, kinds=("mp4",))
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "clip0.mp4"}) + "\n")
    with pytest.raises(DatasetError, match=r"metadata.jsonl line 1: expected"):
        VideoFolder(tmp_path, 4, 16, 16)
