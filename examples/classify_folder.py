"""Classify a folder of images with a build: python examples/classify_folder.py BUILD_DIR FOLDER

Needs only resnext-deploy's runtime (numpy, Pillow, and openvino or onnxruntime): no PyTorch.
In ImageFolder layout (FOLDER/<class>/<image>) it also prints the accuracy.
"""
import sys
from pathlib import Path

from resnext_deploy import runtime

build_dir, folder = sys.argv[1], Path(sys.argv[2])
clf = runtime.load(build_dir)  # the best artifact this machine can run, sha256-verified
print(f"running {clf.artifact.name} ({clf.backend}, {clf.precision})")

images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"})
correct = 0
for path, pred in zip(images, clf.predict(images, top_k=1)):
    print(f"{path.relative_to(folder)}: {pred.label} ({pred.probability:.1%})")
    correct += pred.label == path.parent.name

if images and all(p.parent != folder for p in images):  # class subfolders: the folder name is the truth
    print(f"accuracy: {correct}/{len(images)} = {correct / len(images):.2%}")
