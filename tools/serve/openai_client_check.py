"""The official `openai` Python client against `unclip serve`: images.generate and
images.create_variation in both response formats, and the errors it raises for a bad key and
a bad size. Run by tools/serve/clients.sh (which .ci/run calls after installing `openai`)."""

import argparse
import base64
import io
import struct
import sys
import urllib.request
import warnings

import openai
from openai import OpenAI


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


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

    print(f"openai {openai.__version__}: images.generate, images.create_variation and errors OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
