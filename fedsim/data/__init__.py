"""Datasets (numpy arrays) and partitioners that split them among simulated clients."""

from .datasets import Dataset, load, load_digits, load_mnist_test, train_test_split
from .partition import (
    ClientIndex,
    dirichlet,
    iid,
    label_histogram,
    partition,
    sampled,
    sorted_blocks,
)
from .nslkdd import (
    NslKdd,
    category_vocabulary,
    client_moments,
    fit_scaler,
    load_nslkdd,
    paper_split,
    pooled_scaler,
    read_nslkdd,
    split_clients,
    standardize,
)
from .paths import (
    DataNotFoundError,
    MalformedDataError,
    data_dir,
    download,
    sha256_file,
    verify_sha256,
)

__all__ = [
    "ClientIndex",
    "DataNotFoundError",
    "Dataset",
    "MalformedDataError",
    "data_dir",
    "dirichlet",
    "download",
    "iid",
    "label_histogram",
    "load",
    "load_digits",
    "load_mnist_test",
    "partition",
    "sampled",
    "sha256_file",
    "sorted_blocks",
    "train_test_split",
    "verify_sha256",
    "NslKdd",
    "category_vocabulary",
    "client_moments",
    "fit_scaler",
    "load_nslkdd",
    "paper_split",
    "pooled_scaler",
    "read_nslkdd",
    "split_clients",
    "standardize",
]
