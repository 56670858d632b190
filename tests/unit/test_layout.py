"""The shape of the package: modules of one concept each, small enough to read."""

import pathlib

import tavrida

TAVRIDA = pathlib.Path(tavrida.__file__).parent


def test_no_core_module_is_over_400_lines():
    # (tavrida/transports/ is being restructured on its own, issue 20)
    long = {str(path.relative_to(TAVRIDA)): n for path in TAVRIDA.rglob("*.py")
            if "transports" not in path.relative_to(TAVRIDA).parts
            and (n := len(path.read_text().splitlines())) > 400}
    assert long == {}


def test_the_server_holds_its_collaborators_instead_of_inheriting_them():
    from tavrida.server import Server

    assert Server.__mro__ == (Server, object)
    assert not (TAVRIDA / "retrying.py").exists() and not (TAVRIDA / "answering.py").exists()
