# xlstm-lm on an official PyTorch CUDA runtime image (pick the tag that matches your cluster's driver):
#   docker build -t xlstm-lm .
#   docker run --gpus all --ipc=host -v $PWD/runs:/workspace/xlstm-lm/runs xlstm-lm \
#       trainer=ddp run_dir=runs/my_run model=xlstm_7_1 size=125m
# Arguments after the image name are Hydra overrides for train.py.
ARG BASE_IMAGE=pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

WORKDIR /workspace/xlstm-lm
COPY pyproject.toml README.md ./
COPY xlstm_lm ./xlstm_lm
RUN pip install --no-cache-dir -e .
COPY configs ./configs
COPY train.py ./

ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["python", "train.py"]
CMD []
