#!/bin/bash
# Train on SLURM without Hydra's launcher: 2 nodes x 8 GPUs, one task per GPU (Lightning reads the ranks
# from SLURM), requeued on pre-emption or at the time limit:
#   sbatch scripts/sbatch_train.sh +experiment=paper_125m_15b
# SLURM sends SIGUSR1 two minutes before the limit; Lightning writes hpc_ckpt_<n>.ckpt and runs
# `scontrol requeue`. The requeued job runs this script again with the same run_dir, and ckpt_path=auto
# resumes from the newest checkpoint there.
#SBATCH --job-name=xlstm-lm
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
##SBATCH --partition=gpu
##SBATCH --account=my_project

set -euo pipefail
cd "${SLURM_SUBMIT_DIR}"
RUN_DIR="runs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}"  # the job id survives a requeue, so the directory does too

srun .venv/bin/python train.py trainer=multinode run_dir="${RUN_DIR}" "$@"
