package org.autoglm.engine;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.fail;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

/** Compares a tensor the engine built with a tensor description from a trace (trace.describe). */
final class TensorCheck {
  private TensorCheck() {}

  /** A sample: a number, or "inf" / "-inf" / "nan" (strict JSON has no infinities). */
  static double value(JsonElement e) {
    if (e.getAsJsonPrimitive().isString()) {
      String s = e.getAsString();
      return s.equals("nan") ? Double.NaN : s.startsWith("-") ? Double.NEGATIVE_INFINITY : Double.POSITIVE_INFINITY;
    }
    return e.getAsDouble();
  }

  /**
   * Shape and dtype exactly; int64 tensors value by value; float32 tensors bit-exact by digest, or
   * else every recorded sample and the statistics within atol + rtol * |expected|.
   *
   * @return true when the digests matched (bit-exact)
   */
  static boolean check(String what, JsonObject expected, Tensor actual, double atol, double rtol) {
    long[] shape = GoldenTrace.longs(expected.getAsJsonArray("shape"));
    assertArrayEquals(what + ": shape", shape, actual.shape());
    String dtype = expected.get("dtype").getAsString();
    assertEquals(what + ": dtype", dtype, actual.dtype() == Tensor.DType.FLOAT32 ? "float32" : "int64");
    boolean exact = expected.get("sha256").getAsString().equals(actual.sha256());
    if (actual.dtype() == Tensor.DType.INT64) {
      JsonElement values = expected.get("values");
      if (values != null && !values.isJsonNull()) {
        long[] want = GoldenTrace.longs(values.getAsJsonArray());
        long[] got = actual.longs();
        for (int i = 0; i < want.length; i++) {
          if (want[i] != got[i]) {
            fail(what + ": value " + i + " is " + got[i] + ", the trace has " + want[i]);
          }
        }
      }
      if (!exact) {
        fail(what + ": int64 digest differs from the trace");
      }
      return true;
    }
    if (exact) {
      return true;
    }
    float[] got = actual.floats();
    JsonArray samples = expected.getAsJsonArray("samples");
    for (JsonElement s : samples) {
      int i = s.getAsJsonArray().get(0).getAsInt();
      double want = value(s.getAsJsonArray().get(1));
      if (Double.isInfinite(want) ? got[i] != want : Math.abs(got[i] - want) > atol + rtol * Math.abs(want)) {
        fail(what + ": element " + i + " is " + got[i] + ", the trace has " + want
            + " (tolerance " + atol + " + " + rtol + " x |expected|)");
      }
    }
    JsonObject stats = expected.getAsJsonObject("stats");
    double sum = 0;
    double abs = 0;
    for (float v : got) {
      sum += v;
      abs += Math.abs(v);
    }
    double mean = sum / got.length;
    double absMean = abs / got.length;
    double scale = Math.max(stats.get("abs_mean").getAsDouble(), 1e-6);
    if (Math.abs(mean - stats.get("mean").getAsDouble()) > atol + rtol * scale
        || Math.abs(absMean - stats.get("abs_mean").getAsDouble()) > atol + rtol * scale) {
      fail(what + ": mean " + mean + " / abs mean " + absMean + " differ from the trace's "
          + stats.get("mean") + " / " + stats.get("abs_mean"));
    }
    return false;
  }
}
