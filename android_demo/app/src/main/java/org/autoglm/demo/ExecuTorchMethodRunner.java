package org.autoglm.demo;

import org.autoglm.engine.EngineException;
import org.autoglm.engine.MethodRunner;
import org.autoglm.engine.Tensor;
import org.pytorch.executorch.DType;
import org.pytorch.executorch.EValue;
import org.pytorch.executorch.Module;

/**
 * Runs the methods of model.pte (vision_encoder, audio_encoder, token_embedding, text_decoder[_step],
 * reset_cache) with ExecuTorch's Android library: Module.execute(method, EValue...).
 *
 * <p>The Module keeps each method's planned memory, so text_decoder's KV cache persists between
 * its calls, as the engine needs.
 */
public final class ExecuTorchMethodRunner implements MethodRunner {
  private final Module module;

  public ExecuTorchMethodRunner(String ptePath) {
    // mmap: the weights are paged in on demand instead of copied into the heap.
    module = Module.load(ptePath, Module.LOAD_MODE_MMAP);
  }

  /** Loads a method now so the first request doesn't pay for it. */
  public void preload(String method) {
    module.loadMethod(method);
  }

  @Override
  public Tensor[] execute(String method, Tensor... inputs) {
    EValue[] args = new EValue[inputs.length];
    for (int i = 0; i < inputs.length; i++) {
      args[i] = EValue.from(toExecuTorch(inputs[i]));
    }
    EValue[] outs = module.execute(method, args);
    if (outs == null || outs.length == 0) {
      throw new EngineException("model.pte: " + method + " returned nothing (see logcat tag ExecuTorch)");
    }
    Tensor[] result = new Tensor[outs.length];
    for (int i = 0; i < outs.length; i++) {
      result[i] = fromExecuTorch(outs[i].toTensor());
    }
    return result;
  }

  public void close() {
    module.destroy();
  }

  private static org.pytorch.executorch.Tensor toExecuTorch(Tensor t) {
    if (t.dtype() == Tensor.DType.FLOAT32) {
      return org.pytorch.executorch.Tensor.fromBlob(t.floats(), t.shape());
    }
    return org.pytorch.executorch.Tensor.fromBlob(t.longs(), t.shape());
  }

  private static Tensor fromExecuTorch(org.pytorch.executorch.Tensor t) {
    long[] shape = t.shape();
    if (t.dtype() == DType.FLOAT) {
      return Tensor.ofFloats(t.getDataAsFloatArray(), shape);
    }
    if (t.dtype() == DType.INT64) {
      return Tensor.ofLongs(t.getDataAsLongArray(), shape);
    }
    throw new EngineException("model.pte returned a " + t.dtype() + " tensor; expected float32 or int64");
  }
}
