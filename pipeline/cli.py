"""The `talkcurate` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib.metadata import version

from pipeline.config import RunConfig, render_defaults
from schemas.manifest import SCHEMA_VERSION
from schemas.records import FPS


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("pipeline").setLevel(min(level, logging.INFO))


def _cmd_run(args) -> int:
    from pipeline.inspect import render
    from pipeline.run import run

    config = RunConfig.load(args.config, args.set or [])
    if args.no_progress:
        config.execution.progress = False
    result = run(args.inputs, args.out, config, address=args.address)
    print(render(result.summary))
    print(
        f"\n{result.sources_processed} sources processed in {result.wall_s:.1f} s; "
        f"manifest, index and report.html in {args.out}"
    )
    return 0


def _cmd_inspect(args) -> int:
    from core.storage import OutputDir
    from pipeline.inspect import inspection, load, render_inspection, render_rows

    columns = _names(args.columns) if args.columns is not None else [] if args.rows else None
    table, index = load(OutputDir(args.dir))
    if args.sql is not None:
        if args.where or args.by or args.hist or columns is not None:
            raise ValueError("--sql is a whole query: use it without --where, --by, --hist, --rows and --columns")
        from pipeline.sql import read_tables, run_sql

        rows = run_sql(table, args.sql, read_tables(args.table or [])).to_pylist()
        print("\n".join(json.dumps(row, default=str) for row in rows) if args.json else render_rows(rows))
        return 0
    if args.table:
        raise ValueError("--table names a table for --sql")
    report = inspection(table, index, args.where, _names(args.by), args.hist or [], args.bins, columns)
    print(json.dumps(report, indent=1) if args.json else render_inspection(report))
    return 0


def _names(text: str | None) -> list[str]:
    """Column names from a comma-separated option."""
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def _cmd_subset(args) -> int:
    from core.storage import OutputDir
    from pipeline.shards import ShardsConfig
    from pipeline.subset import copy_subset, write_sample_list

    source = OutputDir(args.dir)
    if args.list:
        selected = write_sample_list(source, args.where, args.list)
        print(f"{args.list}: {selected} samples of {args.dir}")
        return 0
    sizes = {"target_shard_mb": args.target_shard_mb, "max_samples_per_shard": args.max_samples_per_shard}
    shards = ShardsConfig(**{name: value for name, value in sizes.items() if value is not None})
    shards.validate()
    result = copy_subset(source, args.where, OutputDir(args.out, create=True), shards)
    print(
        f"{args.out}: {result.samples} samples in {result.shards} shards ({result.bytes / 1e6:.1f} MB), {result.rows} "
        "manifest rows"
    )
    return 0


def _cmd_verify(args) -> int:
    from core.storage import OutputDir
    from pipeline.verify import verify, verify_sample_list
    from schemas.sample_list import is_sample_list

    checked, problems = verify_sample_list(args.dir) if is_sample_list(args.dir) else verify(OutputDir(args.dir))
    for problem in problems:
        print(problem)
    print(f"{checked} shards checked, {len(problems)} problems")
    return 1 if problems else 0


def _cmd_browse(args) -> int:
    import tempfile

    from pipeline.browse import build_site, serve

    try:
        if args.out:
            site = build_site(args.dir, args.out, args.limit)
            print(
                f"{site.folder}/index.html: {site.kept_shown} of {site.kept_total} kept samples, "
                f"{site.rejected_shown} of {site.rejected_total} rejected rows"
            )
            return 0
        with tempfile.TemporaryDirectory(prefix="talkcurate-browse-") as folder:
            build_site(args.dir, folder, args.limit)
            with serve(folder, args.port) as server:
                print(
                    f"serving {args.dir} at http://127.0.0.1:{server.server_address[1]}/ from {folder} (Ctrl-C stops)",
                    flush=True,
                )
                server.serve_forever()
    except KeyboardInterrupt:  # how serving ends; the temporary page is gone by now
        return 0


def _cmd_dedup(args) -> int:
    from core.storage import OutputDir
    from pipeline.dedup import DedupThresholds, dedup, render

    thresholds = DedupThresholds(args.max_audio_ber, args.max_phash_bits, args.min_motion_corr)
    print(render(dedup(OutputDir(args.dir), thresholds, args.address)))
    return 0


def _cmd_split(args) -> int:
    from core.storage import OutputDir
    from pipeline.split import render, split

    print(render(split(OutputDir(args.dir), args.val)))
    return 0


def _cmd_config(args) -> int:
    print(render_defaults(), end="")
    return 0


def _given(**options):
    """The options given on the command line (None: not given, so the config's own default holds)."""
    return {name: value for name, value in options.items() if value is not None}


def _cmd_sample(args) -> int:
    import warnings

    from train.denoising import SamplerConfig
    from train.generate import WindowConfig, generate, load_trained

    warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
    trained = load_trained(args.checkpoint, args.step, args.device)
    sampler = SamplerConfig(
        **_given(steps=args.steps, order=args.order, text_scale=args.text_scale, audio_scale=args.audio_scale)
    )
    frames = generate(
        trained,
        args.image,
        args.audio,
        args.out,
        args.text,
        sampler,
        WindowConfig(**_given(frames=args.window, overlap=args.overlap)),
        args.seed,
        progress=not args.no_progress,
        reference_video=args.video,
    )
    print(f"{args.out}: {frames} frames ({frames / FPS:.2f} s)")
    return 0


def _cmd_evaluate(args) -> int:
    from evaluate.evaluation import EvaluationConfig, evaluate_videos
    from evaluate.output import pooled_line, summary_table

    logging.getLogger("evaluate").setLevel(logging.INFO)
    config = EvaluationConfig(
        **_given(
            window_s=args.window_s,
            hop_s=args.hop_s,
            identity_per_second=args.identity_per_second,
            identity_backend=args.identity_backend,
            arcface_model=args.arcface_model,
            lip_sync_model=args.lip_sync_model,
            syncnet_model=args.syncnet_model,
            inception_model=args.inception_model,
            i3d_model=args.i3d_model,
            real=args.real,
        )
    )
    reports, summary = evaluate_videos(args.videos, args.out, config, args.reference, args.audio)
    print(summary_table(reports))
    print(pooled_line(summary["sync_pooled"]))
    for metric in ("fid", "fvd"):
        value = summary[metric]
        print(f"{metric.upper()}: {'-' if value is None else f'{value:.2f}'} ({summary[f'{metric}_status']})")
    print(f"\n{len(reports)} videos, {summary['errors']} with errors; JSON per video and index.html in {args.out}")
    return 0


def _cmd_train_sync(args) -> int:
    from train.sync_training import SyncTrainingConfig, train

    logging.getLogger("train").setLevel(logging.INFO)
    config = SyncTrainingConfig(
        **_given(components=args.components, context_steps=args.context_steps, ridge=args.ridge, version=args.version)
    )
    summary = train(args.shards, args.out, config)
    print(
        f"{args.out}: lip-sync model {summary['version']} from {summary['clips']} clips of {summary['sources']} "
        "sources "
        f"({summary['frames'] / FPS:.0f} s) in {summary['seconds']:.0f} s; variance explained per component "
        f"{summary['explained_variance']}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="talkcurate", description="Curate talking-portrait video into WebDataset shards."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument(
        "--version", action="version", version=f"talkcurate {version('talkcurate')} (manifest schema {SCHEMA_VERSION})"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_run,
        _add_inspect,
        _add_subset,
        _add_verify,
        _add_browse,
        _add_dedup,
        _add_split,
        _add_sample,
        _add_evaluate,
        _add_train_sync,
        _add_config,
    ):
        add(commands)
    return parser


def _add_run(commands) -> None:
    run = commands.add_parser("run", help="curate inputs into shards, manifest, index and report (resumes)")
    run.add_argument("inputs", nargs="+", metavar="INPUT", help="video file, folder, list file or URI")
    run.add_argument("--out", required=True, help="output folder or URI; the same --out resumes a run")
    run.add_argument("--config", help="TOML configuration file (see `talkcurate config`)")
    run.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override one option, e.g. scene_cut.max_clip_s=8"
    )
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    run.add_argument("--no-progress", action="store_true", help="no progress line")
    run.set_defaults(func=_cmd_run)


def _add_inspect(commands) -> None:
    inspect = commands.add_parser(
        "inspect", help="funnel, totals, shards and score distributions of a run; queries over its manifest"
    )
    inspect.add_argument("dir")
    inspect.add_argument(
        "--where",
        metavar="PREDICATE",
        help="only the manifest rows it selects, e.g. \"sync_confidence > 0.5 and language = 'en'\"",
    )
    inspect.add_argument(
        "--by", metavar="COLUMN[,COLUMN]", help="rows, kept, rejected and kept seconds per value of these columns"
    )
    inspect.add_argument("--hist", action="append", metavar="COLUMN", help="histogram of a numeric column (repeatable)")
    inspect.add_argument("--bins", type=int, default=20, metavar="N", help="histogram bins (default 20)")
    inspect.add_argument(
        "--rows",
        action="store_true",
        help="list the selected rows (key, status, reason, shard, duration_s and the --where columns)",
    )
    inspect.add_argument("--columns", metavar="COLUMN[,COLUMN]", help="list the selected rows with these columns")
    inspect.add_argument(
        "--sql",
        metavar="QUERY",
        help='a SQL query (DuckDB) over the table `manifest`, e.g. "select language, sum(duration_s) from manifest '
        "where status = 'kept' group by all\"; it cannot read or write files",
    )
    inspect.add_argument(
        "--table",
        action="append",
        metavar="NAME=FILE",
        help="a table of yours (.parquet, .csv, .json lines) for --sql to join (repeatable)",
    )
    inspect.add_argument("--json", action="store_true", help="machine-readable output (with --sql: a JSON line a row)")
    inspect.set_defaults(func=_cmd_inspect)


def _add_subset(commands) -> None:
    subset = commands.add_parser("subset", help="the samples a predicate selects, as a new shard set or a sample list")
    subset.add_argument("dir", help="a run's (or a subset's) output folder")
    subset.add_argument("--where", metavar="PREDICATE", help="the manifest rows to keep (default: all)")
    target = subset.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--out",
        metavar="DIR2",
        help="new output folder: the selected samples copied into new shards, with manifest and index",
    )
    target.add_argument(
        "--list", metavar="FILE.json", help="a sample list naming the selected samples in place (no bytes copied)"
    )
    subset.add_argument(
        "--target-shard-mb",
        type=float,
        metavar="MB",
        help="with --out: close a shard once it holds this many MB (default: shards.target_shard_mb's)",
    )
    subset.add_argument(
        "--max-samples-per-shard",
        type=int,
        metavar="N",
        help="with --out: also close a shard at this many samples (default: shards.max_samples_per_shard's)",
    )
    subset.set_defaults(func=_cmd_subset)


def _add_verify(commands) -> None:
    verify = commands.add_parser("verify", help="re-read every shard against the index; non-zero exit on mismatch")
    verify.add_argument("dir", help="an output folder, or a sample list (FILE.json from `subset --list`)")
    verify.set_defaults(func=_cmd_verify)


def _add_browse(commands) -> None:
    browse = commands.add_parser(
        "browse", help="a page to browse a run's samples: served on 127.0.0.1, or written with --out"
    )
    browse.add_argument("dir", help="a run's output folder or URI")
    browse.add_argument("--out", metavar="PAGE_DIR", help="write the static page here instead of serving it")
    browse.add_argument(
        "--port", type=int, default=8000, help="port on 127.0.0.1 to serve on (0: any free one; default 8000)"
    )
    browse.add_argument(
        "--limit", type=int, help="at most this many kept samples and this many rejected rows (default 200)"
    )
    browse.set_defaults(func=_cmd_browse)


def _add_dedup(commands) -> None:
    from pipeline.dedup import DedupThresholds

    near = DedupThresholds()
    dedup = commands.add_parser(
        "dedup", help="mark near-duplicate kept clips (same footage or same audio) in the manifest's duplicate_of"
    )
    dedup.add_argument("dir", help="a run's output folder or URI")
    dedup.add_argument(
        "--max-audio-ber",
        type=float,
        default=near.max_audio_ber,
        help="audio matches at this bit error rate or less (default %(default)s)",
    )
    dedup.add_argument(
        "--max-phash-bits",
        type=int,
        default=near.max_phash_bits,
        help="video: looks (the majority of a clip's frame hashes) within this many of 64 bits (default %(default)s)",
    )
    dedup.add_argument(
        "--min-motion-corr",
        type=float,
        default=near.min_motion_corr,
        help="video: mouth motion correlates at least this much (default %(default)s)",
    )
    dedup.add_argument(
        "--address",
        nargs="?",
        const="",
        help="spread the motion correlations over the Ray cluster at ADDRESS (given without one: RAY_ADDRESS, "
        "else a local instance; default: in this process)",
    )
    dedup.set_defaults(func=_cmd_dedup)


def _add_split(commands) -> None:
    from pipeline.split import DEFAULT_VAL

    split = commands.add_parser(
        "split", help="assign kept clips to train/val by identity (or source) in the manifest's split"
    )
    split.add_argument("dir", help="a run's output folder or URI")
    split.add_argument(
        "--val", type=float, default=DEFAULT_VAL, help="expected share of clusters for validation (default %(default)s)"
    )
    split.set_defaults(func=_cmd_split)


def _add_sample(commands) -> None:
    sample = commands.add_parser("sample", help="generate a talking portrait from a training run's checkpoint")
    sample.add_argument("--checkpoint", required=True, help="training run folder (config.toml, checkpoints/step-N)")
    sample.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    sample.add_argument("--image", help="portrait image (the identity; default: the --video's first frame)")
    sample.add_argument("--video", help="reference video to edit: only its mouth region is generated, the rest is kept")
    sample.add_argument("--audio", required=True, help="speech, any length; the video is as long")
    sample.add_argument("--text", default="", help="caption")
    sample.add_argument("--out", required=True, help="output mp4 (H.264, 25 fps, the speech muxed)")
    sample.add_argument("--steps", type=int, help="denoising steps (default: train.denoising.SamplerConfig's)")
    sample.add_argument("--order", type=int, choices=(1, 2), help="1: Euler, 2: Heun (default: SamplerConfig's)")
    sample.add_argument("--text-scale", type=float, help="caption guidance scale (1: none; default: SamplerConfig's)")
    sample.add_argument("--audio-scale", type=float, help="audio guidance scale (1: none; default: SamplerConfig's)")
    sample.add_argument("--window", type=int, help="frames denoised together (default: train.generate.WindowConfig's)")
    sample.add_argument(
        "--overlap", type=int, help="frames shared with the previous window, blended (default: WindowConfig's)"
    )
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", default="cpu")
    sample.add_argument("--no-progress", action="store_true", help="no progress bars")
    sample.set_defaults(func=_cmd_sample)


def _add_evaluate(commands) -> None:
    from evaluate.evaluation import EvaluationConfig

    defaults = EvaluationConfig()
    evaluate = commands.add_parser(
        "evaluate", help="score generated (or real) talking-portrait videos: lip sync, identity, face stability"
    )
    evaluate.add_argument("videos", nargs="+", metavar="GENERATED", help="video files to evaluate")
    evaluate.add_argument("--out", required=True, help="folder for NAME.json per video, summary.json and index.html")
    evaluate.add_argument(
        "--reference",
        help="image or video of the person (a video: its first frames with a face); default: each "
        "video's own first frames",
    )
    evaluate.add_argument(
        "--audio", help="speech that replaces every video's own audio track (generated videos are often silent)"
    )
    evaluate.add_argument("--window-s", type=float, help=f"lip-sync window length (default {defaults.window_s})")
    evaluate.add_argument("--hop-s", type=float, help=f"seconds between windows (default {defaults.hop_s})")
    evaluate.add_argument(
        "--identity-per-second",
        type=float,
        help=f"frames compared with the reference a second (default {defaults.identity_per_second})",
    )
    evaluate.add_argument(
        "--identity-backend",
        choices=("dlib-resnet", "none"),
        help="identity model without --arcface-model (default dlib-resnet, shipped)",
    )
    evaluate.add_argument(
        "--arcface-model",
        metavar="ONNX",
        help="ArcFace recognition model (insightface format, "
        "e.g. w600k_r50.onnx): the identity model, as CSIM papers use",
    )
    evaluate.add_argument(
        "--lip-sync-model",
        metavar="NPZ",
        help="learned lip-sync weights (default: the shipped stages/models/lip_sync.npz)",
    )
    evaluate.add_argument(
        "--syncnet-model", metavar="PATH", help="syncnet-python's syncnet_v2.model: Sync-C and Sync-D"
    )
    evaluate.add_argument("--inception-model", metavar="PT", help="Inception TorchScript detector: FID (with --real)")
    evaluate.add_argument("--i3d-model", metavar="PT", help="I3D TorchScript detector: FVD (with --real)")
    evaluate.add_argument("--real", nargs="+", metavar="VIDEO", help="real videos FID and FVD compare with")
    evaluate.set_defaults(func=_cmd_evaluate)


def _add_train_sync(commands) -> None:
    train_sync = commands.add_parser(
        "train-sync", help="train the learned lip-sync model on runs' kept clips (landmarks and in-sync audio)"
    )
    train_sync.add_argument(
        "shards",
        nargs="+",
        metavar="SHARDS",
        help="a run's output folder, or a sample list (FILE.json from `subset --list`)",
    )
    train_sync.add_argument(
        "--out", required=True, help="the weight file to write (the sync stage reads it from sync.lip_sync_model_path)"
    )
    train_sync.add_argument(
        "--components", type=int, help="mouth components the audio predicts (default: the shipped model's)"
    )
    train_sync.add_argument(
        "--context-steps",
        type=int,
        help="20 ms audio steps read on each side of a frame (default: the shipped model's)",
    )
    train_sync.add_argument("--ridge", type=float, help="ridge penalty per frame (default: the shipped model's)")
    train_sync.add_argument(
        "--version", help="version recorded in the file and the manifest's sync_backend (default: the shipped model's)"
    )
    train_sync.set_defaults(func=_cmd_train_sync)


def _add_config(commands) -> None:
    config = commands.add_parser("config", help="print the documented default configuration")
    config.set_defaults(func=_cmd_config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except BrokenPipeError:
        # The reader stopped (`talkcurate inspect --json | head -1`): what it took is all it wanted.
        # Later writes, including the interpreter's last flush, go nowhere instead of failing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, KeyError, OSError) as exc:
        # What a person can fix (a bad option, predicate or input, a missing folder or bucket, a
        # full disk) is one line naming the command, not a traceback; the pipeline's own errors
        # (InputError, ConfigMismatch, PlacementError, BrowseError) are ValueErrors.
        print(f"talkcurate {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
