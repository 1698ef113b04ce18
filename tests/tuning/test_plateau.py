"""--early-stop: the plateau rule on window means of the subject loss."""

from arbooth_cli.tuning.plateau import plateaued, window_means


def test_window_means_leave_out_a_partial_window():
    assert window_means([1, 2, 3, 4, 5], 2) == [1.5, 3.5]


def test_a_falling_loss_goes_on_and_a_flat_one_stops():
    falling = [1.0 - 0.01 * i for i in range(100)]
    assert not plateaued(falling, window=10, patience=2, min_delta=0.01)
    flat = falling[:50] + [0.5] * 50  # five flat windows after the fall
    assert plateaued(flat, window=10, patience=2, min_delta=0.01)
    assert not plateaued(flat[:60], window=10, patience=2, min_delta=0.01)  # one flat window is not enough
    # a window that improves by less than min_delta counts as flat
    slow = [1.0] * 10 + [0.995] * 10 + [0.991] * 10
    assert plateaued(slow, window=10, patience=2, min_delta=0.01)
    assert not plateaued(slow, window=10, patience=2, min_delta=0.001)


def test_too_few_windows_or_off_never_stop():
    assert not plateaued([1.0] * 20, window=10, patience=2, min_delta=0.01)
    assert not plateaued([1.0] * 1000, window=10, patience=0, min_delta=0.01)


def test_tune_stops_early_on_a_flat_loss_and_says_so(photos):
    """A learning rate too small to move anything and no training noise: the subject loss is flat,
    so --early-stop 2 stops after three 25-step windows and the saved subject records 75 steps."""
    from safetensors import safe_open

    from arbooth_cli.config import TuneConfig
    from arbooth_cli.jobs.tune import PLATEAU_WINDOW, tune

    notes = []
    cfg = TuneConfig(photos=str(photos), token="sks", cls="dog", model="tiny-infinity", steps=400, batch_size=3,
                     lr=1e-20, bsc_strength=0.0, text_dropout=0.0, drop_path=0.0, prior=False, early_stop=2,
                     validate_every=0, checkpoint_every=0, log_every=5)
    result = tune(cfg, on_event=lambda kind, data: notes.append(data["message"]) if kind == "note" else None)
    assert result.steps == 3 * PLATEAU_WINDOW
    assert any(n.startswith(f"early stop at step {3 * PLATEAU_WINDOW}") for n in notes), notes
    with safe_open(result.subject, "pt") as f:
        assert f.metadata()["steps"] == str(3 * PLATEAU_WINDOW)
