//! `firmware-sim`: runs the board's firmware path on the host over simulated embedded-hal
//! peripherals and proves its codes identical, byte for byte, to the candle path.
