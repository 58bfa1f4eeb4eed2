package org.autoglm.engine;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import java.io.File;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import org.junit.BeforeClass;
import org.junit.Test;
import org.junit.runner.RunWith;
import org.junit.runners.Parameterized;

/**
 * Each golden trace of the embedded model's bundle, replayed through the Java engine: same prompt,
 * ids, positions, preprocessed tensors, model calls (in order, with the same inputs), tokens and
 * streamed text as the Python runtime.
 */
@RunWith(Parameterized.class)
public class GoldenTraceReplayTest {
  @Parameterized.Parameters(name = "{1}")
  public static Collection<Object[]> traces() {
    List<Object[]> out = new ArrayList<>();
    for (File f : GoldenTrace.all()) {
      out.add(new Object[] {f, f.getName()});
    }
    return out;
  }

  private static final java.util.Map<File, TraceRun> RUNS = new java.util.HashMap<>();
  private final File file;

  public GoldenTraceReplayTest(File file, String name) {
    this.file = file;
  }

  private TraceRun run() throws Exception {
    synchronized (RUNS) {
      TraceRun r = RUNS.get(file);
      if (r == null) {
        r = new TraceRun(GoldenTrace.read(file));
        RUNS.put(file, r);
      }
      return r;
    }
  }

  @BeforeClass
  public static void bundleIsThere() {
    assertTrue("no bundle at " + GoldenTrace.bundle(), new File(GoldenTrace.bundle(), "manifest.json").isFile());
  }

  @Test
  public void promptIdsAndPositions() throws Exception {
    TraceRun r = run();
    JsonObject p = r.trace.prompt();
    PromptInputs in = r.generator.lastPrompt;
    assertEquals(p.get("text").getAsString(), in.text);
    assertArrayEquals("input ids after placeholder expansion", GoldenTrace.longs(p.getAsJsonArray("input_ids")), in.inputIds);
    assertArrayEquals("token types", GoldenTrace.ints(p.getAsJsonArray("mm_token_types")), in.types);
    JsonArray planes = p.getAsJsonArray("position_ids");
    for (int plane = 0; plane < 3; plane++) {
      assertArrayEquals("position_ids plane " + plane,
          GoldenTrace.longs(planes.get(plane).getAsJsonArray()), in.positionIds[plane]);
    }
    assertEquals("rope delta", p.get("rope_delta").getAsInt(), in.ropeDelta);
  }

  @Test
  public void imageIsBitExact() throws Exception {
    TraceRun r = run();
    JsonObject pre = r.trace.json.getAsJsonObject("preprocessed");
    if (!pre.has("pixel_values")) {
      return;
    }
    // Pillow's bicubic resize is integer arithmetic and the normalisation float32: equal bits, with
    // the resize passes in the order Pillow ran them (Pillow 13 chooses; see BicubicResize).
    String want = pre.getAsJsonObject("pixel_values").get("sha256").getAsString();
    ImageSpec spec = BundleManifest.read(GoldenTrace.bundle()).image;
    Request q = r.request;
    String hv = new ImagePreprocessor(spec, false).preprocess(q.imageArgb, q.imageWidth, q.imageHeight).sha256();
    String vh = new ImagePreprocessor(spec, true).preprocess(q.imageArgb, q.imageWidth, q.imageHeight).sha256();
    assertTrue("pixel_values equal the runtime's bit for bit with one pass order (hv " + hv.equals(want)
        + ", vh " + vh.equals(want) + ")", hv.equals(want) || vh.equals(want));
  }

  @Test
  public void audioFeaturesMatch() throws Exception {
    TraceRun r = run();
    JsonObject pre = r.trace.json.getAsJsonObject("preprocessed");
    if (!pre.has("input_features")) {
      return;
    }
    TensorCheck.check("input_features", pre.getAsJsonObject("input_features"), r.generator.lastInputFeatures, 2e-4, 1e-4);
  }

  @Test
  public void sameModelCallsInTheSameOrder() throws Exception {
    TraceRun r = run();
    assertEquals("model calls the trace has but the engine never made", 0, r.runner.remaining());
    assertTrue("decoder inputs are spliced from replayed outputs, so they must be bit-exact",
        r.runner.exactFloatInputs > 0);
  }

  @Test
  public void sameTokensAndStreamedText() throws Exception {
    TraceRun r = run();
    JsonArray steps = r.trace.steps();
    assertEquals("generated tokens", steps.size(), r.tokens.size());
    StringBuilder want = new StringBuilder();
    for (int i = 0; i < steps.size(); i++) {
      JsonObject s = steps.get(i).getAsJsonObject();
      assertEquals("token at step " + i, s.get("token").getAsInt(), (int) r.tokens.get(i));
      want.append(s.get("text").getAsString());
    }
    want.append(r.trace.json.getAsJsonObject("generated").get("stream_tail").getAsString());
    assertEquals("streamed text", want.toString(), String.join("", r.texts));
    assertEquals("stop reason", r.trace.json.getAsJsonObject("generated").get("stop_reason").getAsString(), r.result.stopReason);
  }
}
