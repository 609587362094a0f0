"""VQA answer generation on a Ray actor pool, resumable through the results store."""

from __future__ import annotations

import json

from dreamray.evals.pool import PoolOptions
from dreamray.evals.results import ResultsStore
from dreamray.evals.vqa_data import load_questions
from dreamray.evals.vqa_eval import generate_answers, lookup_generator, score_predictions
from dreamray.evals.vqa_prompts import PRESETS


def test_generation_pool_answers_only_pending_questions(ray_cluster, tmp_path):
    data = [
        {
            "question_id": i,
            "image": f"{i}.jpg",
            "question": f"question {i}?",
            "answer": [f"answer {i}"] * 10,
        }
        for i in range(12)
    ]
    (tmp_path / "q.json").write_text(json.dumps(data))
    questions = load_questions("omni", tmp_path / "q.json")
    store = ResultsStore(tmp_path / "answers.jsonl")
    store.append([{"id": "0", "answer": "kept from before"}])
    factory = lookup_generator({f"question {i}?": f"Answer {i}." for i in range(12)})
    answers = generate_answers(
        questions,
        factory,
        PRESETS["textvqa"],
        store,
        str(tmp_path),
        num_patches=1,
        batch_size=2,
        chunk_size=3,
        progress=False,
        pool=PoolOptions(num_actors=2, num_cpus=0.5),
    )
    assert answers["0"] == "kept from before"
    assert all(answers[str(i)] == f"answer {i}" for i in range(1, 12))
    assert len(ResultsStore(tmp_path / "answers.jsonl")) == 12
    result = score_predictions(questions, answers, variant="official")
    assert result["overall"] == 100.0 * 11 / 12


def test_pool_larger_than_the_cluster_still_finishes(ray_cluster, tmp_path):
    from dreamray.evals.pool import ActorPool
    from dreamray.evals.vqa_eval import VqaWorker

    factory = lookup_generator({"q": "a"})
    # 3 CPUs each on the 4-CPU test cluster: one actor starts, two never get scheduled.
    options = PoolOptions(num_actors=3, num_cpus=3)
    items = [[{"id": str(i), "question": "q", "image": "x.jpg"}] for i in range(5)]
    with ActorPool(VqaWorker, options, factory, PRESETS["okvqa"], 1, str(tmp_path), 1) as pool:
        results = dict(pool.map_unordered(VqaWorker.answer, items))
    assert sorted(results) == list(range(5)) and results[4][0]["answer"] == "a"


def test_a_worker_that_cannot_start_is_a_clear_error(ray_cluster, tmp_path):
    import functools

    import pytest

    from dreamray.evals.pool import ActorPool, WorkerStartError
    from dreamray.evals.vqa_eval import VqaWorker

    factory = functools.partial(int, "not a model")  # the factory raises inside the actor
    options = PoolOptions(num_actors=1, num_cpus=0.5)
    with ActorPool(VqaWorker, options, factory, PRESETS["okvqa"], 1, str(tmp_path), 1) as pool:
        with pytest.raises(WorkerStartError, match="VqaWorker actor failed to start"):
            pool.call_ready(VqaWorker.answer, [])
