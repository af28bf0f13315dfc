"""``make demo``: the main job, end to end, on the embedded model.

Starts a real ``cloud-server``, asks questions about the shipped sample images through the
edge client in both modes (AlignedVQ indices, and the cloud-only JPEG-90 upload), prints the
answers and the bytes each mode sent, and stops the server. With ``--web-port PORT``
(``make demo WEB_PORT=8080``) the server also serves the browser edge (cloud-server
--web-port; the edge graph is exported first if it is not yet) and keeps running after the
table, until Ctrl-C, so the page can be opened.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.parse

from alignedvq.evaluation.answers import is_correct
from alignedvq.server_process import ServerProcess
from alignedvq.v1 import inference_pb2 as pb
from alignedvq.v1 import inference_pb2_grpc as pb_grpc
from common.imaging.policy import open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_EDGE_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from common.wire.channels import channel
from edge_agent.client import ask_with_codes, ask_with_image, check_compatible
from edge_agent.torch_edge import EdgeHalf


def _web_flags(port: int | None) -> tuple[str, ...]:
    if port is None:
        return ()
    if not (DEFAULT_EDGE_DIR / "edge.json").is_file():
        print("exporting the edge graph for the browser (alignedvq export-edge) ...", flush=True)
        subprocess.run([sys.executable, "-m", "alignedvq.cli", "export-edge"], check=True,
                       stdout=subprocess.DEVNULL)
    return ("--web-port", str(port))


def _serve_page(server: ServerProcess, rows: list[dict]) -> None:
    url = next(line.split(" web on ", 1)[1].strip() for line in server.lines if " web on " in line)
    # The sample images are on the web port too (/samples/), so the link works as it is.
    example = urllib.parse.urlencode({"image": "samples/" + rows[5]["image"].split("/")[-1],
                                      "question": rows[5]["question"]})
    print(f"\nthe browser edge: open {url}\n(deep link: {url}?{example})\n"
          f"cloud-server keeps serving; Ctrl-C stops it", flush=True)
    try:
        server.proc.wait()
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alignedvq.demo")
    parser.add_argument("--web-port", type=int, help="also serve the browser edge's page on "
                        "this port, and keep serving after the table (Ctrl-C stops)")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in (SAMPLES_DIR / "questions.jsonl").read_text().splitlines()]
    print("starting cloud-server on the embedded model ...", flush=True)
    with ServerProcess(*_web_flags(args.web_port)) as server:
        server.wait_ready()
        stub = pb_grpc.InferenceServiceStub(channel(server.address))
        info = stub.GetServerInfo(pb.GetServerInfoRequest())
        print(f"server {server.address}: model {info.model_id}, {info.tokens} image tokens, "
              f"K={info.codebook_size} ({info.bits} bits) x {info.stages} stage(s)\n")
        edge = EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR, "alignedvq")
        check_compatible(info, edge)
        totals = {"alignedvq": [0, 0], "image": [0, 0]}
        print(f"{'image':<12} {'question':<34} {'expected':<11} {'alignedvq':<20} "
              f"{'image (JPEG-90)':<20}")
        for row in rows:
            image = open_image(SAMPLES_DIR / row["image"])
            vq = ask_with_codes(stub, edge, image, row["question"])
            jpeg = ask_with_image(stub, image, row["question"], info.image_size, 90)
            for r in (vq, jpeg):
                totals[r.mode][0] += r.payload_bytes
                totals[r.mode][1] += is_correct(r.answer, row["answer"])
            print(f"{row['image'].split('/')[-1]:<12} {row['question']:<34} {row['answer']:<11} "
                  f"{vq.answer + f' ({vq.payload_bytes} B)':<20} "
                  f"{jpeg.answer + f' ({jpeg.payload_bytes} B)':<20}")
        n = len(rows)
        vq_bytes, jpeg_bytes = totals["alignedvq"][0] / n, totals["image"][0] / n
        print(f"\nalignedvq: {totals['alignedvq'][1]}/{n} right, {vq_bytes:.0f} B per request")
        print(f"image:     {totals['image'][1]}/{n} right, {jpeg_bytes:.0f} B per request")
        print(f"the split path sent {jpeg_bytes / vq_bytes:.1f}x fewer bytes than the JPEG upload")
        if args.web_port is not None:
            _serve_page(server, rows)
        print("stopping cloud-server")
    return 0


if __name__ == "__main__":
    sys.exit(main())
