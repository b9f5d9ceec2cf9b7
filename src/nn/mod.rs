//! A minimal neural-network core written by hand: an NCHW f32 tensor, convolution layers
//! through im2col and a register-tiled GEMM, ReLU, residual blocks, MSE, Adam and SGD, and
//! the VQ-VAE encoder and decoder built from them. No autodiff: every layer's forward caches
//! what its backward needs, and its backward (in llm.c's manner) returns the input gradient
//! and accumulates the parameter gradients with `+=`. Every backward is checked against
//! central finite differences through the f64 references in [`reference`].

pub mod gemm;
pub mod reference;
pub mod tensor;

pub use tensor::{Param, Tensor};
pub mod conv;
pub mod layers;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod vqvae;

pub use conv::{Conv2d, ConvTranspose2d, Window};
pub use layers::{Layer, Relu, ResidualBlock, ResidualStack, mse_loss};
pub use model::{ConvNetConfig, Decoder, Encoder, autoencoder_step};
pub use optim::{Adam, Sgd};
pub use vqvae::{QuantizerKind, RqVae, VqVae, VqVaeConfig, VqVaeOutput};
