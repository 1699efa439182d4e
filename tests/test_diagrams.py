"""The explanatory diagrams: figures come back, their shape labels follow the arguments."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vitprune_lite import diagrams  # noqa: E402
from vitprune_lite.errors import InvalidValueError  # noqa: E402


def _texts(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


def test_device_cloud_flow_is_a_figure_with_both_sides():
    fig = diagrams.device_cloud_flow()
    assert isinstance(fig, Figure)
    text = _texts(fig)
    assert "upload: mixture only" in text and "per-device pruned model" in text and "BIC" in text
    plt.close(fig)


def test_qk_vo_coupling_shapes_follow_the_arguments():
    fig = diagrams.qk_vo_coupling()  # the v1 base model, block 1 at half of the head dims
    assert isinstance(fig, Figure)
    text = _texts(fig)
    assert "qkv.weight [384, 128] -> [156, 128]" in text and "proj.weight [128, 128] -> [128, 52]" in text
    plt.close(fig)
    fig = diagrams.qk_vo_coupling(num_heads=3, head_dim=64, width=192, keep=26)  # v2
    assert "qkv.weight [576, 192] -> [234, 192]" in _texts(fig) and "[192, 78]" in _texts(fig)
    plt.close(fig)


@pytest.mark.parametrize("kw", [{"keep": 0}, {"keep": 33}, {"num_heads": 0}])
def test_qk_vo_coupling_refuses_bad_sizes(kw):
    with pytest.raises(InvalidValueError, match="accepted"):
        diagrams.qk_vo_coupling(**kw)
