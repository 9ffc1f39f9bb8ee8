# shellcheck shell=bash
# Shared by the sbatch templates in slurm/ (sourced from the repository root, never run).
#
#   brainmri_init              python, site setup ($BRAINMRI_SETUP), signal forwarding settings
#   brainmri_workers PROCS     loader workers per training process: CPUs per process - 1
#   brainmri_run CMD...        run training so that SLURM's warning signal reaches it; requeue on it
#
# The templates ask for `--signal=B:USR2@120 --requeue --open-mode=append`: 120 s before the time
# limit SLURM sends USR2 to the batch shell only. brainmri_run starts the training command in the
# background, forwards USR2 and TERM to it and waits. Training treats USR2 as a stop: it finishes
# the optimizer step, keeps the last epoch checkpoint, writes status "preempted" and exits 140
# (through a launcher: non-zero). After such a stop the job requeues itself
# (`scontrol requeue`); the next attempt runs the same command line, which resumes from the run
# directory's checkpoint (the run directory is run_dir=..., or the default one, a hash of the
# config). At most $BRAINMRI_MAX_REQUEUES requeues (default 20). With --open-mode=append the job's
# log keeps every attempt.

# Torch's elastic agent (accelerate launch --multi_gpu) handles only TERM/INT/HUP/QUIT unless
# told otherwise (torchrun --signals-to-handle, here through its PET_ variable); with USR2 in the
# list it forwards it to its workers and waits for them, up to TORCH_ELASTIC_SHUTDOWN_TIMEOUT s.
export PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-100}

brainmri_die() { echo "error: $*" >&2; exit 2; }

# brainmri_init: sets $python; sources $BRAINMRI_SETUP (module load, conda activate, ...) if set.
brainmri_init() {
    if [[ -n ${BRAINMRI_SETUP:-} ]]; then
        [[ -f $BRAINMRI_SETUP && -r $BRAINMRI_SETUP ]] ||
            brainmri_die "BRAINMRI_SETUP=$BRAINMRI_SETUP is not a readable file"
        echo "$(date -Is) sourcing setup $BRAINMRI_SETUP"
        # shellcheck disable=SC1090  # the site's own file
        source "$BRAINMRI_SETUP"
    fi
    python=${BRAINMRI_PYTHON:-python3}
    [[ -z ${BRAINMRI_PYTHON:-} && -x .venv/bin/python ]] && python=.venv/bin/python
    return 0
}

# brainmri_workers PROCS: the loader workers of each of PROCS training processes sharing this
# task's CPUs (SLURM_CPUS_PER_TASK): one CPU per process for training, the rest for workers.
brainmri_workers() {
    local cpus=${SLURM_CPUS_PER_TASK:-1} procs=$1 workers
    workers=$((cpus / procs - 1))
    ((workers < 0)) && workers=0
    echo "$workers"
}

# brainmri_has_override KEY ARGS...: true when ARGS holds KEY=...
brainmri_has_override() {
    local key=$1 arg
    shift
    for arg in "$@"; do [[ $arg == "$key="* ]] && return 0; done
    return 1
}

# From the moment this file is sourced a USR2 or TERM is caught: before training starts it
# means "do not start" (USR2: requeue), later it is forwarded to the training command.
_brainmri_signals=0
_brainmri_stop=""
_brainmri_child=""
_brainmri_on_signal() {
    _brainmri_signals=$((_brainmri_signals + 1))
    _brainmri_stop=${_brainmri_stop:-$1}
    if [[ -n $_brainmri_child ]]; then kill -"$1" "$_brainmri_child" 2>/dev/null || true; fi
}
trap '_brainmri_on_signal USR2' USR2
trap '_brainmri_on_signal TERM' TERM

# brainmri_run CMD...: run CMD, forward USR2/TERM to it, requeue after a USR2 stop; returns CMD's status.
brainmri_run() {
    local status=0 seen again
    if [[ -n $_brainmri_stop ]]; then  # signalled while the job was still setting up
        [[ $_brainmri_stop == USR2 ]] && brainmri_requeue "not started"
        [[ $_brainmri_stop == USR2 ]] && return 140
        return 143
    fi
    "$@" &
    _brainmri_child=$!
    while :; do
        seen=$_brainmri_signals
        wait "$_brainmri_child" && status=0 || status=$?
        ((seen == _brainmri_signals)) && break  # the child ended
        # a trapped signal interrupted the wait: wait on while the child lives; if it ended meanwhile,
        # its status is still there to collect (127: already collected above)
        if ! kill -0 "$_brainmri_child" 2>/dev/null; then
            wait "$_brainmri_child" 2>/dev/null && status=0 || { again=$?; ((again != 127)) && status=$again; }
            break
        fi
    done
    _brainmri_child=""
    if [[ $_brainmri_stop == USR2 && $status -ne 0 ]]; then
        brainmri_requeue "exit $status"
    fi
    return "$status"
}

brainmri_requeue() {
    local job=${SLURM_JOB_ID:-} restarts=${SLURM_RESTART_COUNT:-0} max=${BRAINMRI_MAX_REQUEUES:-20}
    [[ -n ${SLURM_ARRAY_JOB_ID:-} ]] && job=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
    if [[ -z $job ]]; then
        echo "$(date -Is) stopped by USR2 ($1) outside SLURM: not requeued" >&2
    elif ((restarts >= max)); then
        echo "$(date -Is) $job stopped by USR2 ($1): not requeued, already requeued $restarts times (BRAINMRI_MAX_REQUEUES=$max)" >&2
    else
        echo "$(date -Is) $job stopped by USR2 ($1): requeueing; attempt $((restarts + 2)) resumes from the last checkpoint"
        scontrol requeue "$job"
    fi
}
