package org.autoglm.engine;

import com.google.gson.JsonObject;
import java.awt.image.BufferedImage;
import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import javax.imageio.ImageIO;

/** Runs a trace's request through the engine with a replayed model; keeps what happened. */
final class TraceRun {
  final GoldenTrace trace;
  final ReplayRunner runner;
  final Generator generator;
  final GenerationResult result;
  final Request request;
  final List<Integer> tokens = new ArrayList<>();
  final List<String> texts = new ArrayList<>();

  TraceRun(GoldenTrace trace) throws IOException {
    this.trace = trace;
    File bundle = GoldenTrace.bundle();
    BundleManifest manifest = BundleManifest.read(bundle);
    runner = new ReplayRunner(trace.calls());
    JsonObject prompt = trace.prompt();
    Tokenizer tokenizer =
        new ReplayTokenizer(prompt.get("text").getAsString(), GoldenTrace.longs(prompt.getAsJsonArray("token_ids")));
    Vocabulary vocab = Vocabulary.read(manifest.file(BundleManifest.TOKENIZER));
    generator = new Generator(manifest, new ExecuTorchProgramEngine(runner, manifest), tokenizer, vocab);
    request = request();
    result = generator.generate(request, new GenerationListener() {
      @Override
      public void onToken(int tokenId) {
        tokens.add(tokenId);
      }

      @Override
      public void onText(String delta) {
        texts.add(delta);
      }
    });
  }

  private Request request() throws IOException {
    JsonObject r = trace.request();
    Request req = new Request();
    req.prompt = r.get("prompt").getAsString();
    req.system = r.get("system").isJsonNull() ? null : r.get("system").getAsString();
    req.maxNewTokens = r.get("max_new_tokens").getAsInt();
    req.enableThinking = r.get("enable_thinking").isJsonNull() ? null : r.get("enable_thinking").getAsBoolean();
    File image = trace.input("image");
    if (image != null) {
      BufferedImage img = ImageIO.read(image);
      int w = img.getWidth();
      int h = img.getHeight();
      req.withImage(img.getRGB(0, 0, w, h, null, 0, w), w, h); // ARGB, as Bitmap.getPixels
    }
    File audio = trace.input("audio");
    if (audio != null) {
      WavReader.Audio a = WavReader.read(Files.readAllBytes(audio.toPath()), audio.getName());
      req.withAudio(a.samples, a.sampleRate);
    }
    return req;
  }
}
