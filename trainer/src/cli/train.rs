//! `bcae train`, `bcae eval`, `bcae plot-log`: training and the Table-1 evaluation.
