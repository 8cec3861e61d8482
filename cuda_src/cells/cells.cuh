// Every cell's pointwise math, once: the kernels of every backend include this file (docs/architecture.md,
// "CUDA cell contract"). The Python twins are flashrnn_core/cells/<cell>.py; test_cells_cuda.py holds them equal.
#pragma once
#include "elman.cuh"
#include "gru.cuh"
#include "lstm.cuh"
#include "slstm.cuh"

// Kernels name their cell with a define (-DFLASHRNN_CELL=LstmCell): the short names, at global scope.
using flashrnn::ElmanCell;
using flashrnn::GruCell;
using flashrnn::LstmCell;
using flashrnn::SlstmCell;
