import pytest

from arbooth_cli import errors as E
from arbooth_cli.cli import _errors


@pytest.mark.parametrize(
    ("exc", "code", "needle"),
    [
        (E.UnknownModelError("infinty-2b", ["infinity-2b"]), 3, "did you mean 'infinity-2b'"),
        (E.ModelNotCachedError("infinity-2b"), 3, "arbooth models add infinity-2b"),
        (E.UnsafeCheckpointError("x.pth holds pickled objects"), 4, "x.pth holds"),
        (E.HashMismatchError("f.pth", "a" * 64, "b" * 64), 4, "expected aaaaaaaaaaaa"),
        (E.ConfigError(["steps must be > 0", "lr must be > 0"]), 4, "invalid configuration: steps must be > 0; lr must be > 0"),
        (E.DiskFullError("no space left"), 5, "no space left"),
        (E.CacheNotWritableError("cannot write"), 5, "cannot write"),
        (E.OfflineError("infinity-2b", "offline"), 6, "arbooth models add infinity-2b"),
        (E.ModelExistsError("m"), 4, "--force"),
    ],
)
def test_every_error_has_a_message_a_hint_line_and_its_exit_code(exc, code, needle):
    text, got = _errors.format_error(exc)
    assert got == code
    assert text.startswith("error: ")
    assert needle in text


def test_report_prints_one_error_line_and_a_traceback_only_in_debug(capsys, monkeypatch):
    assert _errors.report(E.ModelNotCachedError("m")) == 3
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: model 'm' is not in the local cache"
    assert "Traceback" not in err
    monkeypatch.setenv("ARBOOTH_DEBUG", "1")
    try:
        raise E.ModelNotCachedError("m")
    except E.ModelNotCachedError as exc:
        _errors.report(exc)
    err = capsys.readouterr().err
    assert "Traceback" in err and "test_errors.py" in err
    assert _errors.report(KeyboardInterrupt()) == 130


def test_the_table_lists_subclasses_before_their_bases():
    types = [row[0] for row in _errors.ERROR_TABLE]
    for i, t in enumerate(types):
        for later in types[i + 1:]:
            assert not issubclass(later, t) or later is t, f"{later.__name__} is shadowed by {t.__name__}"
    assert types[-1] is E.ArboothError
