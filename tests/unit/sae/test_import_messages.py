"""An import of a folder that holds no SAE says what is missing, never what is there:
the folder may be any on the server, and answers never show its files or path."""

from __future__ import annotations

import pytest

from inference_service.errors import UnsupportedError
from inference_service.sae.formats import detect_format


@pytest.mark.parametrize("files", [[], ["id_rsa", "shadow.txt"]])
def test_no_sae_names_neither_the_files_nor_the_folder(tmp_path, files):
    folder = tmp_path / "private-folder"
    folder.mkdir()
    for name in files:
        (folder / name).write_text("x")
    with pytest.raises(UnsupportedError) as caught:
        detect_format(folder)
    message = caught.value.message
    assert "No SAE recognised" in message
    for secret in [*files, "private-folder", str(tmp_path)]:
        assert secret not in message
