//! BCAE-HT and BCAE-2D int8 encoders over caller-provided scratch memory.
