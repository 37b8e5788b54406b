"""The official `openai` Python client against `unclip serve`: images.generate,
images.create_variation and images.edit in both response formats, and the errors it raises for
a bad key, a bad size and a mask that does not fit the image. Run by tools/serve/clients.sh
(which .ci/run calls after installing `openai`)."""

import argparse
import base64
import io
import struct
import sys
import urllib.request
import warnings
import zlib

import openai
from openai import OpenAI


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def rgba_png(side: int, hole: bool) -> bytes:
    """A square RGBA PNG (a colour gradient), fully transparent in its centre quarter when
    `hole`, opaque elsewhere: the edits API repaints where alpha is 0."""
    rows = []
    for y in range(side):
        row = bytearray(b"\x00")  # filter type: none
        for x in range(side):
            inside = hole and side // 4 <= x < 3 * side // 4 and side // 4 <= y < 3 * side // 4
            row += bytes([x * 7 % 256, y * 7 % 256, 120, 0 if inside else 255])
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def main() -> int:
    # create_variation is marked deprecated in openai 3.x; it is still the Images API call.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--size", required=True, help="the size the model produces, e.g. 32x32")
    args = parser.parse_args()
    side = tuple(int(v) for v in args.size.split("x"))
    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)

    result = client.images.generate(
        prompt="a red circle above a blue square", n=2, size=args.size, response_format="b64_json"
    )
    assert len(result.data) == 2, result
    first = base64.b64decode(result.data[0].b64_json)
    assert png_size(first) == side, png_size(first)

    result = client.images.generate(prompt="a green triangle", response_format="url")
    with urllib.request.urlopen(result.data[0].url) as response:
        assert png_size(response.read()) == side

    upload = io.BytesIO(first)
    upload.name = "image.png"
    result = client.images.create_variation(image=upload, n=3, response_format="b64_json")
    assert len(result.data) == 3, result
    assert all(png_size(base64.b64decode(d.b64_json)) == side for d in result.data)

    # Edits: an opaque image and a mask; then an image whose own transparency marks the region.
    image = ("image.png", rgba_png(side[0], hole=False), "image/png")
    mask = ("mask.png", rgba_png(side[0], hole=True), "image/png")
    result = client.images.edit(
        image=image, mask=mask, prompt="a yellow star", n=2, response_format="b64_json"
    )
    assert len(result.data) == 2, result
    assert all(png_size(base64.b64decode(d.b64_json)) == side for d in result.data)
    holed = ("holed.png", rgba_png(side[0], hole=True), "image/png")
    result = client.images.edit(image=holed, prompt="a yellow star", response_format="url")
    with urllib.request.urlopen(result.data[0].url) as response:
        assert png_size(response.read()) == side
    try:
        small_mask = ("mask.png", rgba_png(side[0] // 2, hole=True), "image/png")
        client.images.edit(image=image, mask=small_mask, prompt="a yellow star")
        raise AssertionError("a mask of another size than the image was accepted")
    except openai.BadRequestError as err:
        assert err.status_code == 400 and err.body["param"] == "mask", err.body
        assert "same size" in err.body["message"], err.body

    try:
        client.images.generate(prompt="x", size="1024x1024")
        raise AssertionError("a size the model does not produce was accepted")
    except openai.BadRequestError as err:
        assert err.status_code == 400 and args.size in str(err), err
        assert err.body["param"] == "size", err.body

    bad = OpenAI(base_url=args.base_url, api_key="sk-wrong", max_retries=0)
    try:
        bad.images.generate(prompt="x")
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as err:
        assert err.status_code == 401 and err.code == "invalid_api_key", err

    print(
        f"openai {openai.__version__}: images.generate, images.create_variation, images.edit"
        " and errors OK"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
