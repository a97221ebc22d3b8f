"""Start-up resource checks (study.resources): GPU splits DDP can train with, and trials the
cluster can never start, refused with the request and the cluster named."""

from __future__ import annotations

import pytest

from study.resources import (
    ResourceError,
    TrialRequest,
    alive_node_resources,
    check_trial_fits,
    fits_on_nodes,
    format_resources,
    gpus_per_worker,
    shortfall,
)

# What `ray.cluster_resources()` reports for study.run's local Ray on this 2-CPU machine
LOCAL_CPU = {
    "CPU": 2.0,
    "trial_slot": 1.0,
    "memory": 4.2e9,
    "object_store_memory": 8.4e7,
    "node:127.0.0.1": 1.0,
}
LOCAL_TRIAL = {"trial_slot": 1.0, "CPU": 0.0}


# ---------------------------------------------------------------------------------------------
# GPUs per worker
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "gpus", "expected"),
    [
        (1, 0, 0.0),
        (4, 0, 0.0),
        (1, 1, 1.0),
        (2, 2, 1.0),
        (8, 8, 1.0),
        (1, 0.5, 0.5),
        (1, 0.25, 0.25),
    ],
)
def test_supported_gpu_splits(workers: int, gpus: float, expected: float):
    assert gpus_per_worker(workers, gpus) == expected


def test_fewer_gpus_than_workers_is_refused_naming_both_flags_and_the_fix():
    with pytest.raises(ResourceError) as info:
        gpus_per_worker(2, 1)
    message = str(info.value)
    assert "--gpus-per-trial 1" in message and "--workers-per-trial 2" in message
    assert "0.5 GPU each" in message and "NCCL" in message
    assert "use --gpus-per-trial 2" in message


@pytest.mark.parametrize(("workers", "gpus"), [(4, 3), (3, 1.5), (2, 0.5)])
def test_any_share_below_one_gpu_per_rank_is_refused(workers: int, gpus: float):
    with pytest.raises(ResourceError, match="share a GPU"):
        gpus_per_worker(workers, gpus)


def test_several_gpus_per_rank_are_refused_with_the_matching_worker_count():
    with pytest.raises(ResourceError, match="use --workers-per-trial 4"):
        gpus_per_worker(2, 4)
    with pytest.raises(ResourceError, match="1.5 GPUs"):
        gpus_per_worker(2, 3)


@pytest.mark.parametrize(("workers", "gpus", "text"), [(0, 0, "at least 1"), (1, -1, "0 or more")])
def test_nonsense_counts_are_refused(workers: int, gpus: float, text: str):
    with pytest.raises(ResourceError, match=text):
        gpus_per_worker(workers, gpus)


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def test_request_total_adds_the_trial_bundle_to_every_worker_bundle():
    request = TrialRequest(trial={"CPU": 1.0}, worker={"CPU": 2.0, "GPU": 1.0}, workers=4)
    assert request.total() == {"CPU": 9.0, "GPU": 4.0}
    # zero amounts (the local study's CPU-free trial bundle) are not needs
    local = TrialRequest(trial=LOCAL_TRIAL, worker={"CPU": 1.0}, workers=2)
    assert local.total() == {"CPU": 2.0, "trial_slot": 1.0}


def test_format_and_shortfall():
    assert format_resources({"GPU": 0.5, "CPU": 2.0}) == "CPU 2, GPU 0.5"
    assert format_resources(LOCAL_CPU, ["CPU", "GPU"]) == "CPU 2, GPU 0"
    assert shortfall({"CPU": 2.0, "GPU": 1.0, "x": 0.0}, {"CPU": 2.0}) == {"GPU": 1.0}
    assert shortfall({"CPU": 0.3 + 0.6}, {"CPU": 0.9}) == {}  # float sums are not a shortfall


def test_alive_node_resources_skips_dead_nodes():
    nodes = [
        {"NodeID": "a", "Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}},
        {"NodeID": "b", "Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}},
        {"NodeID": "c", "Alive": True, "Resources": {"CPU": 2.0}},
    ]
    assert alive_node_resources(nodes) == [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 2.0}]


def test_fits_on_nodes_places_whole_bundles_only():
    two_gpu_nodes = [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}]
    one_per_node = TrialRequest(trial={"CPU": 1.0}, worker={"CPU": 1.0, "GPU": 1.0}, workers=2)
    assert fits_on_nodes(one_per_node, two_gpu_nodes)
    # 3 CPUs per worker: the totals (4 CPUs, 2 GPUs) would do, but no node holds 3 CPUs
    big = TrialRequest(trial={}, worker={"CPU": 3.0, "GPU": 1.0}, workers=1)
    assert not fits_on_nodes(big, two_gpu_nodes)
    # The trial bundle takes 1.5 CPUs on one node; both workers (1 CPU) still need a place:
    # node A keeps 0.5 CPU (no worker), node B holds 2 -> fits; with 3 workers it does not
    tight = [{"CPU": 2.0}, {"CPU": 2.0}]
    assert fits_on_nodes(TrialRequest({"CPU": 1.5}, {"CPU": 1.0}, 2), tight)
    assert not fits_on_nodes(TrialRequest({"CPU": 1.5}, {"CPU": 1.0}, 3), tight)
    # The trial bundle needs a resource only one node has: it must go there
    slots = [{"CPU": 1.0}, {"CPU": 1.0, "trial_slot": 1.0}]
    assert fits_on_nodes(TrialRequest({"trial_slot": 1.0}, {"CPU": 1.0}, 2), slots)
    assert not fits_on_nodes(TrialRequest({"trial_slot": 2.0}, {"CPU": 1.0}, 1), slots)


# ---------------------------------------------------------------------------------------------
# The start-up check
# ---------------------------------------------------------------------------------------------


def test_gpu_trial_on_a_cpu_cluster_is_refused_naming_request_and_cluster():
    # Issue 16, defect 9: `--gpus-per-trial 1` on this CPU machine sat pending until killed
    request = TrialRequest(trial=LOCAL_TRIAL, worker={"CPU": 1.0, "GPU": 1.0}, workers=1)
    with pytest.raises(ResourceError) as info:
        check_trial_fits(request, LOCAL_CPU)
    message = str(info.value)
    assert "a trial needs CPU 1, GPU 1, trial_slot 1" in message
    assert "(1 Train worker(s) x [CPU 1, GPU 1] + the trial's own [trial_slot 1])" in message
    assert "the cluster has CPU 2, GPU 0, trial_slot 1 in total (GPU 1 > 0)" in message
    assert "--gpus-per-trial" in message


def test_too_many_cpus_are_refused_with_the_amounts():
    request = TrialRequest(trial={"CPU": 1.0}, worker={"CPU": 1.0}, workers=2)
    with pytest.raises(ResourceError, match=r"CPU 3 > 2"):
        check_trial_fits(request, {"CPU": 2.0})


def test_a_fitting_trial_passes_and_spare_resources_do_not_matter():
    request = TrialRequest(trial=LOCAL_TRIAL, worker={"CPU": 1.0}, workers=2)
    assert check_trial_fits(request, LOCAL_CPU) is None
    gpu = TrialRequest(trial={"CPU": 1.0}, worker={"CPU": 1.0, "GPU": 1.0}, workers=2)
    cluster_nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    assert check_trial_fits(gpu, {"CPU": 16.0, "GPU": 2.0}, cluster_nodes) is None


def test_a_worker_larger_than_every_node_is_refused_even_when_totals_suffice():
    request = TrialRequest(trial={"CPU": 1.0}, worker={"CPU": 1.0, "GPU": 2.0}, workers=1)
    nodes = [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}]
    with pytest.raises(ResourceError) as info:
        check_trial_fits(request, {"CPU": 8.0, "GPU": 2.0}, nodes)
    message = str(info.value)
    assert "no placement fits the cluster's nodes ([CPU 4, GPU 1]; [CPU 4, GPU 1];" in message
    assert "one node" in message


def test_autoscaling_cluster_gets_a_warning_instead_of_an_error():
    request = TrialRequest(trial={"CPU": 1.0}, worker={"CPU": 1.0, "GPU": 1.0}, workers=2)
    warning = check_trial_fits(request, {"CPU": 4.0}, [{"CPU": 4.0}], autoscaling=True)
    assert warning is not None
    assert "GPU 2 > 0" in warning and "waits for nodes to join" in warning
    # ...and no warning when the trial fits
    assert check_trial_fits(request, {"CPU": 4.0, "GPU": 2.0}, autoscaling=True) is None


def test_concurrency_is_what_the_cluster_holds_capped_by_the_user() -> None:
    from study.resources import decide_concurrency, trials_that_fit

    local = [{"CPU": 2.0, "trial_slot": 1024.0, "memory": 1e10}]
    one_cpu = TrialRequest(trial={"trial_slot": 1.0, "CPU": 0.0}, worker={"CPU": 1.0}, workers=1)
    assert trials_that_fit(one_cpu, local) == 2
    assert decide_concurrency(None, one_cpu, local)[0] == 2
    count, why = decide_concurrency(1, one_cpu, local)
    assert count == 1 and "--max-concurrent 1 caps it" in why
    # four 8-GPU nodes, two 1-GPU workers per trial, drivers on the head's resource
    head = {"CPU": 64.0, "GPU": 8.0, "node:__internal_head__": 1.0}
    nodes = [head] + [{"CPU": 64.0, "GPU": 8.0}] * 3
    ddp = TrialRequest(
        trial={"node:__internal_head__": 0.001, "CPU": 0.0},
        worker={"CPU": 1.0, "GPU": 1.0},
        workers=2,
    )
    assert trials_that_fit(ddp, nodes) == 16
    # 3 CPUs per worker on 8-CPU nodes: 2 bundles per node (a bundle never spans nodes)
    assert trials_that_fit(TrialRequest({}, {"CPU": 3.0}, 1), [{"CPU": 8.0}] * 2) == 4
    # nothing fits yet (autoscaling): one trial, which waits for nodes
    assert decide_concurrency(None, ddp, [{"CPU": 4.0}])[0] == 1
