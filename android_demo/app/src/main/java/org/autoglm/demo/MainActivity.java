package org.autoglm.demo;

import android.Manifest;
import android.content.pm.PackageManager;
import android.net.Uri;
import android.os.Bundle;
import android.os.Handler;
import android.os.Looper;
import android.widget.Button;
import android.widget.EditText;
import android.widget.ImageView;
import android.widget.ScrollView;
import android.widget.TextView;
import androidx.activity.result.ActivityResultLauncher;
import androidx.activity.result.contract.ActivityResultContracts;
import androidx.appcompat.app.AppCompatActivity;
import androidx.core.content.FileProvider;
import java.io.File;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import org.autoglm.engine.GenerationListener;
import org.autoglm.engine.GenerationResult;
import org.autoglm.engine.Request;
import org.autoglm.engine.SamplingConfig;

/**
 * One screen: a screenshot (picked or captured), an optional recording and a task go to the
 * model; the answer streams in, with load time, prefill and decode speed and memory below.
 * All model work runs on one background thread; the UI thread only posts text.
 */
public class MainActivity extends AppCompatActivity {
  private static final int MAX_NEW_TOKENS = 256;

  private final ExecutorService worker = Executors.newSingleThreadExecutor();
  private final Handler ui = new Handler(Looper.getMainLooper());
  private final AudioRecorder recorder = new AudioRecorder();

  private TextView status;
  private TextView media;
  private TextView answer;
  private TextView stats;
  private EditText prompt;
  private ImageView preview;
  private ScrollView scroll;
  private Button send;
  private Button record;

  private BundleSession session;
  private ImageLoader image;
  private float[] audio;
  private boolean recording;
  private Uri captureUri;

  private ActivityResultLauncher<String> pickImage;
  private ActivityResultLauncher<Uri> takePicture;
  private ActivityResultLauncher<String> askMicrophone;

  @Override
  protected void onCreate(Bundle savedInstanceState) {
    super.onCreate(savedInstanceState);
    setContentView(R.layout.activity_main);
    status = findViewById(R.id.status);
    media = findViewById(R.id.media);
    answer = findViewById(R.id.answer);
    stats = findViewById(R.id.stats);
    prompt = findViewById(R.id.prompt);
    preview = findViewById(R.id.preview);
    scroll = findViewById(R.id.scroll);
    send = findViewById(R.id.send);
    record = findViewById(R.id.record);

    pickImage = registerForActivityResult(new ActivityResultContracts.GetContent(), this::onImage);
    takePicture = registerForActivityResult(new ActivityResultContracts.TakePicture(), ok -> {
      if (ok) {
        onImage(captureUri);
      }
    });
    askMicrophone = registerForActivityResult(new ActivityResultContracts.RequestPermission(), granted -> {
      if (granted) {
        toggleRecording();
      } else {
        media.setText("microphone permission denied");
      }
    });

    findViewById(R.id.pick).setOnClickListener(v -> pickImage.launch("image/*"));
    findViewById(R.id.capture).setOnClickListener(v -> capture());
    findViewById(R.id.clear).setOnClickListener(v -> {
      image = null;
      audio = null;
      preview.setImageBitmap(null);
      showMedia();
    });
    record.setOnClickListener(v -> {
      if (checkSelfPermission(Manifest.permission.RECORD_AUDIO) == PackageManager.PERMISSION_GRANTED) {
        toggleRecording();
      } else {
        askMicrophone.launch(Manifest.permission.RECORD_AUDIO);
      }
    });
    send.setOnClickListener(v -> generate());
    send.setEnabled(false);
    loadBundle();
  }

  @Override
  protected void onDestroy() {
    worker.shutdownNow();
    if (session != null) {
      session.close();
    }
    super.onDestroy();
  }

  /** The bundle folder: internal files dir first, else the adb-writable external files dir. */
  private File bundleDir() {
    File internal = new File(getFilesDir(), "bundle");
    if (new File(internal, "manifest.json").isFile()) {
      return internal;
    }
    File external = getExternalFilesDir(null);
    return external != null ? new File(external, "bundle") : internal;
  }

  private void loadBundle() {
    File dir = bundleDir();
    status.setText("loading " + dir + " …");
    worker.execute(() -> {
      try {
        BundleSession s = BundleSession.load(dir);
        ui.post(() -> {
          session = s;
          send.setEnabled(true);
          status.setText(String.format(Locale.US, "%s: %s, context %d, loaded in %d ms\n%s",
              dir, s.manifest.target, s.manifest.maxContext, s.loadMs, MemoryStats.describe()));
          showMedia();
        });
      } catch (RuntimeException e) {
        ui.post(() -> status.setText(getString(R.string.no_bundle, dir) + "\n" + e.getMessage()));
      }
    });
  }

  private void capture() {
    File dir = new File(getCacheDir(), "captures");
    dir.mkdirs();
    captureUri = FileProvider.getUriForFile(this, getPackageName() + ".files", new File(dir, "capture.jpg"));
    takePicture.launch(captureUri);
  }

  private void onImage(Uri uri) {
    if (uri == null) {
      return;
    }
    worker.execute(() -> {
      try {
        ImageLoader img = ImageLoader.load(getContentResolver(), uri);
        ui.post(() -> {
          image = img;
          preview.setImageBitmap(img.bitmap);
          showMedia();
        });
      } catch (RuntimeException e) {
        ui.post(() -> media.setText(e.getMessage()));
      }
    });
  }

  private void toggleRecording() {
    if (!recording) {
      if (session != null && !session.manifest.hasAudio()) {
        media.setText("this bundle has no audio tower");
        return;
      }
      recorder.start();
      recording = true;
      record.setText(R.string.stop);
      return;
    }
    recording = false;
    record.setText(R.string.record);
    try {
      audio = recorder.stop();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
    showMedia();
  }

  private void showMedia() {
    StringBuilder sb = new StringBuilder();
    if (image != null) {
      sb.append(String.format(Locale.US, "image %dx%d", image.bitmap.getWidth(), image.bitmap.getHeight()));
      if (session != null) {
        sb.append(String.format(Locale.US, " -> %dx%d", session.manifest.image.width, session.manifest.image.height));
      }
      sb.append('\n');
    }
    if (audio != null) {
      sb.append(String.format(Locale.US, "audio %.1f s", audio.length / (float) AudioRecorder.SAMPLE_RATE));
      if (session != null && session.manifest.hasAudio()) {
        float window = session.manifest.audio.numSamples() / (float) session.manifest.audio.samplingRate;
        sb.append(String.format(Locale.US, " (the model hears the first %.1f s)", window));
      }
    }
    media.setText(sb.toString());
  }

  private void generate() {
    String text = prompt.getText().toString().trim();
    if (text.isEmpty() || session == null) {
      return;
    }
    Request req = new Request();
    req.prompt = text;
    req.maxNewTokens = MAX_NEW_TOKENS;
    req.sampling = SamplingConfig.greedy(); // the phone agent runs at temperature 0
    if (image != null) {
      req.withImage(image.argb, image.bitmap.getWidth(), image.bitmap.getHeight());
    }
    if (audio != null) {
      req.withAudio(audio, AudioRecorder.SAMPLE_RATE);
    }
    answer.setText("");
    send.setEnabled(false);
    BundleSession s = session;
    worker.execute(() -> {
      try {
        GenerationResult r = s.generator.generate(req, new GenerationListener() {
          @Override
          public void onText(String delta) {
            ui.post(() -> {
              answer.append(delta);
              scroll.fullScroll(ScrollView.FOCUS_DOWN);
            });
          }
        });
        String line = String.format(Locale.US,
            "%d prompt tokens, %d generated (%s)\npreprocess+embed %.0f ms, prefill %.0f ms (%.1f tok/s), decode %.1f tok/s\n%s",
            r.promptTokens, r.tokenIds.length, r.stopReason, r.preprocessMs, r.prefillMs,
            r.prefillTokensPerSecond(), r.decodeTokensPerSecond(), MemoryStats.describe());
        ui.post(() -> stats.setText(line));
      } catch (RuntimeException e) {
        ui.post(() -> stats.setText("error: " + e.getMessage()));
      } finally {
        ui.post(() -> send.setEnabled(true));
      }
    });
  }
}
