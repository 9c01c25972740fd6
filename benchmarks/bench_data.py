"""The data the benchmarks run on: generated BIDS datasets and many stored tensors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np


def generate(out: Path, n_subjects: int, voxel_size: float, kind: str = "trivial",
             seed: int = 0) -> list[Path]:
    """A synthetic raw BIDS dataset; returns its images."""
    from bidsapp_dl.generate import generate_dataset

    generate_dataset(out, kind=kind, n_subjects=n_subjects, seed=seed, voxel_size=voxel_size,
                     overwrite=True)
    return sorted(out.glob("sub-*/anat/*_T1w.nii.gz"))


def _participants(bids: Path) -> list[dict[str, str]]:
    lines = (bids / "participants.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


def replicate(base_bids: Path, base_output: Path, bids: Path, counts: tuple[int, ...],
              seed: int = 0) -> dict[int, Path]:
    """Many participants made from a few real extractions, written as the participant level does.

    Participant ``i`` gets the tensor of base participant ``i % k`` with faint noise (so that no
    two tensors are byte-identical, which would make them duplicates of one another), that
    participant's diagnosis, and a sidecar from ``bidsapp_dl.extract.store``. One derivative per
    count, the smaller ones hard links to the first images of the largest. Returns count -> folder.
    """
    from bidsapp_dl.bids.index import ImageRecord
    from bidsapp_dl.extract import store
    from bidsapp_dl.maps.io import write_json

    sidecars = sorted(base_output.glob("sub-*/anat/*_desc-tensor_T1w.json"))
    if not sidecars:
        raise FileNotFoundError(f"no extracted tensor in {base_output}")
    base = [(np.load(s.with_suffix(".npy")), json.loads(s.read_text(encoding="utf-8")))
            for s in sidecars]
    people = {f"sub-{p['participant_id'].removeprefix('sub-')}": p for p in _participants(base_bids)}
    n = max(counts)
    width = len(str(n))
    labels = [f"{i + 1:0{width}d}" for i in range(n)]
    bids.mkdir(parents=True, exist_ok=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "neurodl benchmark: replicated tensors", "BIDSVersion": "1.10.0",
         "DatasetType": "raw"}, indent=2) + "\n", encoding="utf-8")
    rows = ["participant_id\tdiagnosis\tage\tsex"]
    rng = np.random.default_rng(seed)
    outputs = {c: bids / "derivatives" / f"tensors-{c}" for c in counts}
    for out in outputs.values():
        store.prepare_output(out, bids, [])
    largest = outputs[n]
    written = []
    for i, label in enumerate(labels):
        data, meta = base[i % len(base)]
        person = people[f"sub-{meta['Entities']['subject']}"]
        rows.append(f"sub-{label}\t{person['diagnosis']}\t{float(person['age']) + i % 7:.1f}\t"
                    f"{person['sex']}")
        noisy = np.clip(data + rng.normal(0, 1e-3, data.shape).astype(data.dtype), 0, 1)
        noisy = np.ascontiguousarray(noisy, dtype=data.dtype)
        entities = {**meta["Entities"], "subject": label}
        record = ImageRecord(bids / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz", "raw",
                             bids, entities)
        tensor, sidecar = store.tensor_paths(largest, record)
        tensor.parent.mkdir(parents=True, exist_ok=True)
        store.write_tensor(tensor, noisy)
        source_sha = hashlib.sha256(f"{meta['SourceSHA256']}:{label}".encode()).hexdigest()
        write_json(sidecar, store.sidecar(record, source_sha, noisy, np.array(meta["Affine"]),
                                          meta["Preprocessing"], meta["PreprocessingInfo"],
                                          meta["ExtractionSeconds"]))
        written.append((tensor, sidecar))
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    for count, out in outputs.items():
        if out == largest:
            continue
        for tensor, sidecar in written[:count]:
            for path in (tensor, sidecar):
                target = out / path.relative_to(largest)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)
    return outputs
