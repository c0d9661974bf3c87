"""draw() writes a PNG."""

import topologies as T

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_draw_writes_png(tmp_path):
    for name, G in [("ring", T.ring(12)), ("ba", T.barabasi_albert(80, 2, seed=0)),
                    ("directed", T.directed_exponential(8))]:
        path = tmp_path / f"{name}.png"
        assert T.draw(G, path, seed=0) == str(path)
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)
