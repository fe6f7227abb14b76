"""`gantrain verify DATA`: every shard of a packed data set checked against its manifest.

Per shard: the sha256 of its bytes against the one `pack` recorded, the samples it holds against the count
the manifest lists, and how many of them fail to decode as the trainer decodes them (image and label only,
nothing unpickled). A shard that differs in any of these is what a run would warn about or skip at
training time; verifying first finds it before a long job starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gantrain.atomic import sha256_file
from gantrain.data.shards import ShardUnavailable
from gantrain.data.stream import decode_sample, read_manifest, skip_reason


@dataclass
class ShardReport:
    name: str
    listed: int  # samples the manifest lists
    found: int  # samples the tar holds (up to the first damage)
    corrupt: int  # samples that do not decode
    checksum: str  # "ok", "MISMATCH" or "not listed" (a manifest written without sha256)
    problem: str = ""  # the first read error or undecodable sample, for the table's last column

    @property
    def ok(self) -> bool:
        return self.found == self.listed and self.corrupt == 0 and self.checksum != "MISMATCH"


def verify(root: str | Path) -> list[ShardReport]:
    """One report per shard, in manifest order; a damaged manifest is a DataError (one line)."""
    manifest = read_manifest(root)
    if manifest.resize:  # an index of images of any size: decoding (fitted to a small square) is the check
        manifest = manifest.at(32)
    reports = []
    reader = manifest.access.reader(manifest)
    for index, ((url, listed), expected) in enumerate(zip(manifest.shards, manifest.checksums)):
        name = url.rsplit("/", 1)[-1]
        try:
            shard = reader.open(index)
        except ShardUnavailable as exc:
            reports.append(ShardReport(name, listed, 0, 0, "not listed" if expected is None else "MISMATCH",
                                       f"unavailable: {exc}"))
            continue
        with shard:
            checksum = "not listed" if expected is None else "ok" if sha256_file(shard.path) == expected \
                else "MISMATCH"
            corrupt = 0
            problem = f"stops after {len(shard)}: {shard.errors[0]}" if shard.errors else ""
            for i in range(len(shard)):
                try:
                    decode_sample(shard.sample(i), manifest)
                except Exception as exc:  # counted and reported, like the trainer skips it
                    corrupt += 1
                    problem = problem or f"{shard.table.keys[i].decode()}: {skip_reason(exc)}"
        reader.release(shard)
        reports.append(ShardReport(name, listed, len(shard), corrupt, checksum, problem))
    reader.close()
    return reports


def table(reports: list[ShardReport]) -> str:
    """A fixed-width table, one row per shard, then a totals line."""
    width = max([len("shard"), *(len(r.name) for r in reports)])
    lines = [f"{'shard':<{width}}  {'listed':>7}  {'found':>7}  {'corrupt':>7}  {'sha256':<10}  status"]
    for r in reports:
        status = "ok" if r.ok else "BAD" + (f": {r.problem}" if r.problem else "")
        lines.append(f"{r.name:<{width}}  {r.listed:>7}  {r.found:>7}  {r.corrupt:>7}  {r.checksum:<10}  "
                     f"{status}"[:200])
    bad = sum(not r.ok for r in reports)
    lines.append(f"{len(reports)} shards, {sum(r.found for r in reports)} of {sum(r.listed for r in reports)} "
                 f"listed samples found, {sum(r.corrupt for r in reports)} corrupt, {bad} shard(s) bad")
    return "\n".join(lines)
