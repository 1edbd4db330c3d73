"""Detection on real rain: the VOC reader (DAWN), the KITTI tracking frames, the ``fasterrcnn_kitti``
detector over YOLOv5 features, and the rains the study renders."""

import pytest
import torch

from datasets.detection import RAINS, detection_dataset
from datasets.kitti_tracking import read_tracking_labels, tracking_samples
from datasets.voc import read_voc, voc_folder
from detectors.torchvision_det import build_detector
from detectors.yolo_frcnn import fasterrcnn_kitti, init_from_yolov5
from models.registry import weights_for, weights_for_rain
from test_yolov5 import TINY_CFG, _save_foreign, tiny_file, tiny_net  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")

VOC = """<annotation><filename>wrong-name.jpg</filename><size><width>64</width><height>48</height><depth>3</depth></size>
<object><name>car</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>
<object><name>truck</name><bndbox><xmin>10</xmin><ymin>5</ymin><xmax>64</xmax><ymax>48</ymax></bndbox></object>
{extra}</annotation>"""


def _voc_set(tmp_path, extra="", image_size=(64, 48), name="a"):
    from PIL import Image

    (tmp_path / "Annotations").mkdir(exist_ok=True)
    Image.new("RGB", image_size).save(tmp_path / f"{name}.jpg")
    (tmp_path / "Annotations" / f"{name}.xml").write_text(VOC.format(extra=extra))
    return tmp_path


def test_voc_reader_pairs_by_stem_and_maps_names(tmp_path):
    entries = voc_folder(_voc_set(tmp_path), tmp_path / "Annotations")
    (stem, path, objects), = entries
    assert stem == "a" and path.name == "a.jpg"  # the XML's filename field is ignored
    assert [o.type for o in objects] == ["Car", "Truck"]
    assert objects[0].bbox == (2.0, 3.0, 30.0, 40.0) and objects[0].truncated == 0.0


@pytest.mark.parametrize("extra, message", [
    ("<object><name>car</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>70</xmax><ymax>40</ymax></bndbox></object>",
     "reaches outside"),
    ("<object><name>car</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>2</xmax><ymax>40</ymax></bndbox></object>",
     "empty box"),
    ("<object><name>car</name><bndbox><xmin>2</xmin><ymin>x</ymin><xmax>9</xmax><ymax>40</ymax></bndbox></object>",
     "not a number"),
    ("<object><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>9</xmax><ymax>40</ymax></bndbox></object>", "missing <name>"),
])
def test_voc_reader_names_the_file_and_the_fault(tmp_path, extra, message):
    _voc_set(tmp_path, extra)
    with pytest.raises(ValueError, match=message) as err:
        voc_folder(tmp_path, tmp_path / "Annotations")
    assert "a.xml" in str(err.value)


def test_voc_reader_refuses_malformed_xml_missing_image_and_wrong_size(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><size>")
    with pytest.raises(ValueError, match="bad.xml.*not a readable VOC XML"):
        read_voc(bad)
    (tmp_path / "one").mkdir()
    folder = _voc_set(tmp_path / "one")
    (folder / "Annotations" / "b.xml").write_text(VOC.format(extra=""))
    with pytest.raises(ValueError, match="b.xml has no image"):
        voc_folder(folder, folder / "Annotations")
    folder = tmp_path / "two"
    folder.mkdir()
    _voc_set(folder, image_size=(60, 48))
    with pytest.raises(ValueError, match="says 64x48 but the image is 60x48"):
        voc_folder(folder, folder / "Annotations")
    folder = tmp_path / "three"
    folder.mkdir()
    _voc_set(folder)
    (folder / "Annotations" / "a.xml").unlink()
    with pytest.raises(ValueError, match="a.jpg: no annotation file"):
        voc_folder(folder, folder / "Annotations")


def test_tracking_labels_group_by_frame_and_keep_only_frames_with_images(tmp_path):
    from PIL import Image

    line = "{f} {t} {kind} 0 1 -1.5 10 20 {x2} 60 1.5 1.6 4.0 1.0 1.5 10.0 -1.5\n"
    (tmp_path / "label_02").mkdir()
    (tmp_path / "label_02" / "0000.txt").write_text(
        line.format(f=0, t=0, kind="Car", x2=50) + line.format(f=0, t=1, kind="Van", x2=40)
        + line.format(f=1, t=0, kind="Car", x2=55) + line.format(f=2, t=0, kind="Car", x2=52))
    (tmp_path / "image_02" / "0000").mkdir(parents=True)
    for frame in (0, 2):
        Image.new("RGB", (80, 70)).save(tmp_path / "image_02" / "0000" / f"{frame:06d}.jpg")
    labels = read_tracking_labels(tmp_path / "label_02" / "0000.txt")
    assert sorted(labels) == [0, 1, 2] and [o.type for o in labels[0]] == ["Car", "Van"]
    samples = tracking_samples(tmp_path)
    assert [s[2] for s in samples] == ["0000/000000", "0000/000002"]
    assert samples[0][0].shape == (70, 80, 3) and samples[1][1][0].bbox == (10.0, 20.0, 52.0, 60.0)
    (tmp_path / "label_02" / "0000.txt").write_text("0 0 Car 0 1\n")
    with pytest.raises(ValueError, match=r"0000.txt:1: expected 17 fields"):
        tracking_samples(tmp_path)


def test_kitti_detector_starts_from_yolo_features_and_keeps_its_config(tiny_file, tiny_net, tmp_path):
    from detectors import zoo
    from detectors.yolo_frcnn import yolo_cfg_of

    cfg = yolo_cfg_of(tiny_file)
    torch.manual_seed(0)
    det = build_detector("fasterrcnn_kitti", min_size=64, max_size=128, yolo_cfg=cfg)
    record = init_from_yolov5(det.model, tiny_file)
    assert record["loaded"] > 0
    body = det.model.backbone.body
    # the backbone's conv weights are the YOLO file's (half precision in the file)
    assert torch.equal(body[0].conv.weight, tiny_net.model[0].conv.weight)
    assert not any(p.requires_grad for p in body[0].parameters())  # frozen early layers
    assert any(p.requires_grad for p in det.model.roi_heads.parameters())
    outs = det([torch.rand(3, 48, 80), torch.rand(3, 64, 64)])
    assert len(outs) == 2 and all(set(o) == {"boxes", "labels", "scores"} for o in outs)
    path = tmp_path / "det.pt"
    det.save(path, {"min_size": 64, "max_size": 128, "yolo_cfg": cfg})
    again = zoo.get_detector("fasterrcnn_kitti", path)
    x = [torch.rand(3, 48, 80)]
    a, b = det(x)[0], again(x)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    det.save(tmp_path / "no-cfg.pt", {"min_size": 64, "max_size": 128})
    with pytest.raises(ValueError, match="must carry its YOLOv5 config"):
        zoo.get_detector("fasterrcnn_kitti", tmp_path / "no-cfg.pt")
    with pytest.raises(ValueError, match="needs the YOLOv5 config"):
        fasterrcnn_kitti()


def test_kitti_detector_trains_on_cars_and_vans(tiny_file, tmp_path):
    from datasets.kitti import Object
    from detectors.train_det import prepare_samples, train_detector
    from detectors.yolo_frcnn import POSITIVE_TYPES, yolo_cfg_of

    torch.manual_seed(0)
    det = build_detector("fasterrcnn_kitti", min_size=64, max_size=128, yolo_cfg=yolo_cfg_of(tiny_file))
    image = (torch.rand(3, 64, 96) * 255).to(torch.uint8)
    objects = [Object("Car", 0.0, 0, (5, 5, 40, 30)), Object("Van", 0.0, 0, (50, 10, 90, 50)),
               Object("DontCare", -1, -1, (0, 0, 4, 4))]
    assert len(prepare_samples([(image, objects)], POSITIVE_TYPES)[0][1]) == 2
    assert len(prepare_samples([(image, objects)])[0][1]) == 1  # the default: Car only
    frozen = det.model.backbone.body[0].conv.weight.clone()
    res = train_detector(det, [(image, objects)], 2, batch=1, ckpt_path=tmp_path / "c.pt", progress=False,
                         positive_types=POSITIVE_TYPES)
    assert res["complete"] and res["final_loss"] > 0
    assert torch.equal(det.model.backbone.body[0].conv.weight, frozen)


def test_the_shipped_kitti_detector_loads_without_data_and_finds_nothing_in_a_flat_frame(monkeypatch):
    from detectors import zoo

    monkeypatch.delenv("RESGUIDE_DATA", raising=False)
    det = zoo.get_detector("fasterrcnn_kitti", profile="smoke")  # smoke scores with the quick detector
    assert det.meta["identity"]["source"] == "shipped" and det.meta["max_size"] == 1242
    out = det([torch.full((3, 96, 320), 0.5)])[0]
    assert len(out["boxes"]) == 0 or float(out["scores"].max()) < 0.5


def test_the_study_renders_the_fitted_rains_with_the_models_trained_on_them():
    assert {"light-real", "heavy-real"} <= set(RAINS)
    assert weights_for_rain("resguidenet", "heavy-real") == "heavy-real"
    assert weights_for_rain("resguidenet", "light-real") == "light-real"
    assert weights_for_rain("none", "heavy-real") is None


def test_one_function_decides_the_weights_for_score_detect_and_the_tables():
    from benchmark.tables import TABLES

    for spec in TABLES.values():  # a table's "{rain}" cell is the cell score and detect would compute
        for row in spec.rows:
            for col in spec.columns:
                if col.weights == "{rain}":
                    assert spec.key(row, col).weights == weights_for(col.method, row), (spec.id, row, col)
    assert weights_for("resguidenet", "Rain100L") == "light-real"  # was light: 27.67 against Table 2's 30.22
    assert weights_for("resguidenet", "Rain100H") == weights_for("ddn", "Rain100H") == "heavy-real"
    assert weights_for("resguidenet", "KITTI", "heavy-real") == "heavy-real"  # added rain: its own model
    assert weights_for("jorder", "KITTI", "light") == "light"
    assert weights_for("resguidenet", "DAWN", "none") == weights_for("resguidenet", "DAWN") == "light-real"
    assert weights_for("resguidenet", "some-folder") == "light"  # a set it does not know: the default rain
    assert weights_for("prenet", "Rain100L") == "official" and weights_for("did_mdn", "KITTI", "heavy") == "density"
    assert weights_for("identity", "DAWN") is None and weights_for("gmm", "Rain100L") is None


@pytest.mark.realdata
def test_dawn_reads_as_a_detection_set_and_refuses_added_rain(data_root, tmp_path):
    from benchmark.detection import detect_cell

    ds = detection_dataset("DAWN", data_root, "smoke")
    assert len(ds) == 8 and ds.ids[0] == "rain_storm-001"
    assert ds.n_objects > 0 and ds.image(0).ndim == 3
    assert {o.type for g in ds.gts for o in g} <= {"Car", "Truck", "Bus", "Pedestrian", "Motorcycle"}
    cell = detect_cell("identity", "DAWN", "heavy", "yolov5n", profile="smoke", data_root=data_root, results=tmp_path)
    assert cell["status"] == "failed" and "already rainy" in cell["error"]


@pytest.mark.realdata
def test_kitti_tracking_frames_are_the_readme_s(data_root):
    from datasets.kitti_tracking import TRACKING_DIR

    samples = tracking_samples(data_root / TRACKING_DIR)
    assert len(samples) == 93
    assert sum(o.type == "Car" for s in samples for o in s[1]) == 239
    assert sum(o.type == "Van" for s in samples for o in s[1]) == 153


@pytest.mark.realdata
def test_dawn_section_gives_each_derainer_s_gain_with_a_paired_interval(data_root, tmp_path, monkeypatch):
    from benchmark import detection
    from benchmark.ap_table import write_ap_table
    from benchmark.detection import ap_cells

    monkeypatch.setattr(detection, "REAL_RAIN_DERAINERS", (("resguidenet", "light-real"),))  # one, for time
    sections = ap_cells("smoke", data_root, results=tmp_path, datasets=("DAWN",), detector="yolov5n",
                        derainers=())
    (dataset, rain, rows, cells), = sections
    assert dataset == "DAWN" and rain == "none" and rows[0].label == "rainy"
    assert not any(r.label.startswith("clean") for r in rows)  # no clean counterparts
    assert cells[0]["status"] == "ok" and cells[0]["n_images"] == 8
    by_row = dict(zip([(r.derainer, r.weights) for r in rows], cells))
    light = by_row[("resguidenet", "light-real")]
    assert light["status"] == "ok" and light["derainer_weights"]["tag"] == "light-real"
    assert light["inference"]["path"] == "eager"  # 8 photographs: under the compilation threshold
    for cell in (cells[0], light):  # the merged vehicle class: at least the car labels, its own AP
        v = cell["vehicle"]
        assert v["types"] == ["Car", "Truck", "Bus"] and v["n_objects"] >= cell["n_objects"]
        assert 0 <= v["metrics"]["coco_ap50"] <= 1 and v["ci"]["coco_ap50"][0] <= v["metrics"]["coco_ap50"]
        assert all(len(r) == 6 and r[5] in ("Car", "Truck", "Bus") for p in cell["per_image"] for r in p["vehicle_dets"])
    md = write_ap_table(sections, "smoke", tmp_path)[0].read_text()
    assert "Vehicle AP50 [95% CI]" in md and "Gain vehicle AP50" in md
    # a Car-only detector's section: no vehicle columns, and the note says why
    car_only = [{**c, "detector": "fasterrcnn_kitti", "vehicle": {"why": "fasterrcnn_kitti has no truck / bus classes"}}
                for c in cells]
    md = write_ap_table([(dataset, rain, rows, car_only)], "smoke", tmp_path / "car_only")[0].read_text()
    assert "Vehicle AP50" not in md and "Vehicle AP: none (fasterrcnn_kitti has no truck / bus classes)" in md
    assert "DAWN, real rain" in md and "Gain AP50 vs rainy [paired 95% CI]" in md
    assert "rainy + ResGuideNet (light-real)" in md and "GMM" in md  # the left-out derainer says why
    assert "Deraining " in md and "noise" in md
