package org.autoglm.engine;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Base64;

/**
 * A model that answers from a golden trace: each execute() must be the trace's next call (same
 * method, same inputs) and returns that call's recorded outputs, so the generation loop downstream
 * sees exactly what the Python runtime saw.
 */
final class ReplayRunner implements MethodRunner {
  private final JsonArray calls;
  private int next;
  int exactFloatInputs;
  int approxFloatInputs;

  ReplayRunner(JsonArray calls) {
    this.calls = calls;
  }

  @Override
  public Tensor[] execute(String method, Tensor... inputs) {
    assertTrue("call " + next + " " + method + ": the trace has only " + calls.size() + " calls",
        next < calls.size());
    JsonObject call = calls.get(next).getAsJsonObject();
    String where = "call " + next + " " + method;
    assertEquals("call " + next + ": method", call.get("method").getAsString(), method);
    JsonArray want = call.getAsJsonArray("inputs");
    assertEquals(where + ": number of inputs", want.size(), inputs.length);
    for (int i = 0; i < inputs.length; i++) {
      JsonObject w = want.get(i).getAsJsonObject();
      String name = w.get("name").getAsString();
      boolean exact = TensorCheck.check(where + " input " + name, w, inputs[i], atol(name), 1e-4);
      if (!exact && atol(name) == EXACT) {
        fail(where + " input " + name + ": differs from the trace, which it must equal bit for bit");
      }
      if (inputs[i].dtype() == Tensor.DType.FLOAT32) {
        if (exact) {
          exactFloatInputs++;
        } else {
          approxFloatInputs++;
        }
      }
    }
    next++;
    JsonArray outs = call.getAsJsonArray("outputs");
    Tensor[] result = new Tensor[outs.size()];
    for (int i = 0; i < result.length; i++) {
      result[i] = output(outs.get(i).getAsJsonObject());
    }
    return result;
  }

  /**
   * pixel_values: up to 8 uint8 levels (/255/std), because Pillow 13 sometimes runs its resize's
   * vertical pass first (BicubicResize); GoldenTraceReplayTest.imageIsBitExact checks the rest
   * bit for bit. input_features: Java's own FFT and float rounding. Everything else (ids,
   * positions, embeddings spliced from replayed outputs) should be exact.
   */
  static double atol(String input) {
    if (input.equals(ModelNames.INPUT_PIXEL_VALUES)) {
      return 8 / 255.0 / 0.26;
    }
    if (input.equals(ModelNames.INPUT_INPUT_FEATURES)) {
      return 2e-4;
    }
    return EXACT;
  }

  static final double EXACT = 0;

  int remaining() {
    return calls.size() - next;
  }

  /** A recorded output: whole when the trace stored it, else logits rebuilt from the last row's top-k. */
  static Tensor output(JsonObject o) {
    long[] shape = GoldenTrace.longs(o.getAsJsonArray("shape"));
    int n = (int) Tensor.numel(shape);
    JsonElement data = o.get("data_b64");
    boolean isFloat = o.get("dtype").getAsString().startsWith("float");
    if (data != null) {
      ByteBuffer b = ByteBuffer.wrap(Base64.getDecoder().decode(data.getAsString())).order(ByteOrder.LITTLE_ENDIAN);
      if (isFloat) {
        float[] f = new float[n];
        b.asFloatBuffer().get(f);
        return Tensor.ofFloats(f, shape);
      }
      long[] l = new long[n];
      b.asLongBuffer().get(l);
      return Tensor.ofLongs(l, shape);
    }
    JsonArray topK = o.getAsJsonArray("last_row_top_k");
    int vocab = (int) shape[shape.length - 1];
    float[] f = new float[n];
    float floor = topK.get(topK.size() - 1).getAsJsonArray().get(1).getAsFloat() - 100f;
    java.util.Arrays.fill(f, floor); // only the last row is ever sampled from
    for (JsonElement e : topK) {
      f[n - vocab + e.getAsJsonArray().get(0).getAsInt()] = e.getAsJsonArray().get(1).getAsFloat();
    }
    return Tensor.ofFloats(f, shape);
  }
}
