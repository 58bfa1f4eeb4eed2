package org.autoglm.engine;

import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.File;
import org.junit.Test;

/**
 * The replay must be able to fail: a trace whose recorded inputs are shifted by one (as an engine
 * with an off-by-one would produce) is rejected, naming the input.
 */
public class ReplayCatchesMistakesTest {
  private static GoldenTrace traceWithDecodeSteps() throws Exception {
    for (File f : GoldenTrace.all()) {
      GoldenTrace t = GoldenTrace.read(f);
      if (t.steps().size() > 2) {
        return t;
      }
    }
    throw new IllegalStateException("no trace with more than 2 generated tokens");
  }

  /** The method single-token decode steps call: text_decoder_step when the bundle has it. */
  private static String decodeMethod(GoldenTrace t) {
    for (JsonElement c : t.calls()) {
      if (c.getAsJsonObject().get("method").getAsString().equals(ExecuTorchProgramEngine.TEXT_DECODER_STEP)) {
        return ExecuTorchProgramEngine.TEXT_DECODER_STEP;
      }
    }
    return ExecuTorchProgramEngine.TEXT_DECODER;
  }

  private static GoldenTrace copy(GoldenTrace t) {
    return new GoldenTrace(t.file, JsonParser.parseString(t.json.toString()).getAsJsonObject());
  }

  /** Adds delta to every recorded value of `input` in the n-th call of `method`. */
  private static void shift(GoldenTrace t, String method, int nth, String input, long delta) {
    int seen = 0;
    for (JsonElement c : t.calls()) {
      JsonObject call = c.getAsJsonObject();
      if (!call.get("method").getAsString().equals(method) || seen++ != nth) {
        continue;
      }
      for (JsonElement i : call.getAsJsonArray("inputs")) {
        JsonObject in = i.getAsJsonObject();
        if (in.get("name").getAsString().equals(input)) {
          JsonArray shifted = new JsonArray();
          for (JsonElement v : in.getAsJsonArray("values")) {
            shifted.add(v.getAsLong() + delta);
          }
          in.add("values", shifted);
          return;
        }
      }
    }
    throw new IllegalStateException("no call " + nth + " of " + method + " with input " + input);
  }

  private static void assertRejected(GoldenTrace mutated, String mentions) throws Exception {
    try {
      new TraceRun(mutated);
    } catch (AssertionError e) {
      assertTrue("failure should name " + mentions + ": " + e.getMessage(), e.getMessage().contains(mentions));
      return;
    }
    fail("a trace with shifted " + mentions + " was accepted");
  }

  @Test
  public void prefillPositionsOffByOne() throws Exception {
    GoldenTrace t = copy(traceWithDecodeSteps());
    shift(t, "text_decoder", 0, "position_ids", 1);
    assertRejected(t, "position_ids");
  }

  @Test
  public void decodePositionsOffByOne() throws Exception {
    GoldenTrace t = copy(traceWithDecodeSteps());
    shift(t, decodeMethod(t), 1, "position_ids", -1);
    assertRejected(t, "position_ids");
  }

  @Test
  public void cacheSlotOffByOne() throws Exception {
    GoldenTrace t = copy(traceWithDecodeSteps());
    shift(t, decodeMethod(t), 0, "cache_position", 1);
    assertRejected(t, "cache_position");
  }

  @Test
  public void unshiftedTraceIsAccepted() throws Exception {
    new TraceRun(copy(traceWithDecodeSteps())); // the control: the same path without a mutation
  }
}
