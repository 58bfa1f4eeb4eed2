package org.autoglm.engine;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.Arrays;
import java.util.Collections;
import org.junit.Test;

/** Template rendering and placeholder expansion with the exported bundle's manifest. */
public class PromptEncoderTest {
  private final BundleManifest manifest = BundleManifest.read(GoldenTrace.bundle());

  @Test
  public void rendersTheGlmTemplate() {
    Request r = new Request();
    r.prompt = "打开设置";
    r.system = "sys";
    r.enableThinking = false;
    String text = manifest.chatTemplate.render(r.withImage(new int[] {0}, 1, 1).messages(), false, true);
    assertEquals("[gMASK]<sop><|system|>\nsys<|user|>\n<|begin_of_image|><|image|><|end_of_image|>打开设置"
        + "<|assistant|>\n<think></think>", text);
  }

  @Test
  public void contentIsInsertedLiterally() {
    Message m = Message.text("user", "{role} costs $5 {content}");
    String text = manifest.chatTemplate.render(Collections.singletonList(m), null, false);
    assertEquals("[gMASK]<sop><|user|>\n{role} costs $5 {content}", text);
  }

  @Test
  public void placeholdersExpandToTheFeatureCounts() {
    long img = manifest.imageTokenId;
    long aud = manifest.audioTokenId;
    PromptEncoder enc = new PromptEncoder(manifest, text -> new long[] {1, img, 2, aud, 3});
    Request r = new Request().withImage(new int[] {0}, 1, 1).withAudio(new float[] {0f}, 16000);
    PromptInputs in = enc.encode(r.messages(), null);
    int n = 3 + manifest.image.numTokens() + manifest.audioTokens;
    assertEquals(n, in.length());
    assertEquals(manifest.image.numTokens(), Arrays.stream(in.types).sum());
    assertEquals(img, in.inputIds[1]);
    assertEquals(aud, in.inputIds[2 + manifest.image.numTokens()]);
    assertEquals(3, in.positionIds.length);
  }

  @Test
  public void typedReservedTokensAreRefused() {
    long img = manifest.imageTokenId;
    PromptEncoder enc = new PromptEncoder(manifest, text -> new long[] {1, img, 2});
    Request r = new Request();
    r.prompt = "<|image|>";
    try {
      enc.encode(r.messages(), null);
      fail();
    } catch (EngineException e) {
      assertTrue(e.getMessage(), e.getMessage().contains("reserved token <|image|>"));
    }
  }

  @Test(expected = EngineException.class)
  public void mediaOnlyInUserTurns() {
    new Message("assistant", Collections.singletonList(Message.Part.image()));
  }
}
