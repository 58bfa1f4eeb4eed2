package org.autoglm.engine;

import java.util.ArrayList;
import java.util.List;

/**
 * Prompt to streamed answer (runtime session.py Session): embeddings with the image and audio
 * features spliced in, prefill in chunks of max_seq_len after a cache reset, then one token at a
 * time at positions cache + rope_delta, stopping at any EOS id or max_new_tokens.
 */
public final class Generator {
  private final BundleManifest manifest;
  private final Engine engine;
  private final PromptEncoder prompts;
  private final Vocabulary vocab;
  private final ImagePreprocessor images;
  private final AudioPreprocessor audios;

  /** The prompt and the tensors of the last request, for the app's details view and for tests. */
  public PromptInputs lastPrompt;
  public Tensor lastPixelValues;
  public Tensor lastInputFeatures;

  public Generator(BundleManifest manifest, Engine engine, Tokenizer tokenizer, Vocabulary vocab) {
    this.manifest = manifest;
    this.engine = engine;
    this.prompts = new PromptEncoder(manifest, tokenizer);
    this.vocab = vocab;
    this.images = new ImagePreprocessor(manifest.image);
    this.audios = manifest.hasAudio() ? new AudioPreprocessor(manifest.audio) : null;
  }

  public GenerationResult generate(Request req, GenerationListener listener) {
    if (req.maxNewTokens < 1) {
      throw new EngineException("max new tokens must be >= 1, got " + req.maxNewTokens);
    }
    long t0 = System.nanoTime();
    PromptInputs in = prompts.encode(req.messages(), req.enableThinking);
    int n = in.length();
    if (n + req.maxNewTokens > manifest.maxContext) {
      throw new EngineException(
          "prompt of " + n + " tokens + " + req.maxNewTokens + " new tokens exceeds the context of "
              + manifest.maxContext + " tokens");
    }
    lastPrompt = in;
    Tensor embeds = embed(in, req);
    long t1 = System.nanoTime();
    float[] logits = prefill(embeds, in);
    long t2 = System.nanoTime();

    Sampler sampler = new Sampler(req.sampling);
    StreamDecoder stream = new StreamDecoder(vocab, true);
    List<Integer> tokens = new ArrayList<>();
    StringBuilder text = new StringBuilder();
    String stop = "max_new_tokens";
    int v = manifest.vocabSize;
    int offset = logits.length - v; // last row
    for (int i = 0; i < req.maxNewTokens; i++) {
      int token = sampler.sample(logits, offset, v);
      tokens.add(token);
      listener.onToken(token);
      if (isEos(token)) {
        stop = "eos";
        break;
      }
      String delta = stream.push(token);
      if (!delta.isEmpty()) {
        text.append(delta);
        listener.onText(delta);
      }
      if (i + 1 < req.maxNewTokens) {
        logits = step(token, n + i, in.ropeDelta);
        offset = 0;
      }
    }
    String tail = stream.finish();
    if (!tail.isEmpty()) {
      text.append(tail);
      listener.onText(tail);
    }
    long t3 = System.nanoTime();
    int[] ids = new int[tokens.size()];
    for (int i = 0; i < ids.length; i++) {
      ids[i] = tokens.get(i);
    }
    return new GenerationResult(
        text.toString(), ids, n, stop, (t1 - t0) / 1e6, (t2 - t1) / 1e6, (t3 - t2) / 1e6);
  }

  private Tensor embed(PromptInputs in, Request req) {
    Tensor embeds = engine.tokenEmbedding(in.inputIds);
    lastPixelValues = null;
    lastInputFeatures = null;
    if (req.imageArgb != null) {
      lastPixelValues = images.preprocess(req.imageArgb, req.imageWidth, req.imageHeight);
      splice(embeds, in.inputIds, manifest.imageTokenId, engine.visionEncoder(lastPixelValues), "image");
    }
    if (req.audioMono != null) {
      if (audios == null) {
        throw new EngineException("this model has no audio tower; remove the recording");
      }
      lastInputFeatures = audios.preprocess(req.audioMono, req.audioSampleRate);
      splice(embeds, in.inputIds, manifest.audioTokenId, engine.audioEncoder(lastInputFeatures), "audio");
    }
    return embeds;
  }

  /** Writes feature rows, in order, over the embedding rows of every placeholder id. */
  private void splice(Tensor embeds, long[] ids, long placeholder, Tensor features, String what) {
    int hidden = manifest.hiddenSize;
    float[] dst = embeds.floats();
    float[] src = features.floats();
    int row = 0;
    for (int i = 0; i < ids.length; i++) {
      if (ids[i] == placeholder) {
        if ((row + 1) * hidden > src.length) {
          throw new EngineException("the " + what + " encoder returned fewer rows than placeholders");
        }
        System.arraycopy(src, row * hidden, dst, i * hidden, hidden);
        row++;
      }
    }
    if (row * hidden != src.length) {
      throw new EngineException("the " + what + " encoder returned " + (src.length / hidden)
          + " rows for " + row + " placeholders");
    }
  }

  private float[] prefill(Tensor embeds, PromptInputs in) {
    engine.reset();
    int n = in.length();
    int hidden = manifest.hiddenSize;
    int chunk = manifest.maxSeqLen;
    float[] last = null;
    for (int start = 0; start < n; start += chunk) {
      int end = Math.min(start + chunk, n);
      float[] e = java.util.Arrays.copyOfRange(embeds.floats(), start * hidden, end * hidden);
      long[] cache = new long[end - start];
      long[][] pos = new long[3][end - start];
      for (int k = start; k < end; k++) {
        cache[k - start] = k;
        for (int p = 0; p < 3; p++) {
          pos[p][k - start] = in.positionIds[p][k];
        }
      }
      last = engine.textDecoder(Tensor.ofFloats(e, 1, end - start, hidden), cache, pos).floats();
    }
    return last;
  }

  private float[] step(int token, int cachePosition, int ropeDelta) {
    Tensor e = engine.tokenEmbedding(new long[] {token});
    long[][] pos = Positions.decode(cachePosition, ropeDelta, 1);
    return engine.textDecoder(e, new long[] {cachePosition}, pos).floats();
  }

  private boolean isEos(int token) {
    for (long e : manifest.eosTokenIds) {
      if (e == token) {
        return true;
      }
    }
    return false;
  }
}
