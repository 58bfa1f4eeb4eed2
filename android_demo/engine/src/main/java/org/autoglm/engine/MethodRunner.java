package org.autoglm.engine;

/**
 * Runs one method of a loaded ExecuTorch program: the app's ExecuTorchMethodRunner wraps
 * org.pytorch.executorch.Module.execute(method, EValue...); tests answer from a golden trace.
 */
public interface MethodRunner {
  Tensor[] execute(String method, Tensor... inputs);
}
