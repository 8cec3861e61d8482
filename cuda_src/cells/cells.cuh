// Every cell's pointwise math, once: the kernels of every backend include this file (docs/architecture.md,
// "CUDA cell contract"). The Python twins are flashrnn_core/cells/<cell>.py; the backend tests hold them equal.
// Includes are relative to cuda_src/ (the runtime compiles with that root only, no source-relative lookup).
#pragma once
#include "cells/elman.cuh"
#include "cells/gru.cuh"
#include "cells/lstm.cuh"
#include "cells/slstm.cuh"

// Kernels name their cell with a define (-DFLASHRNN_CELL=LstmCell): the short names, at global scope.
using flashrnn::ElmanCell;
using flashrnn::GruCell;
using flashrnn::LstmCell;
using flashrnn::SlstmCell;
